//! The HTTP path in process, without root: the real `L7` from a YAML
//! config, a mock provider on 127.0.0.1 (TLS and plain), and the sandbox's
//! side as an in-memory stream into `proxy::http::serve_tls` /
//! `serve_plain` (see `common/mod.rs` and `tests/README.md`).
//!
//! Each test asserts what the sandbox got, what the provider got and the
//! transaction record egret emitted for it.
mod common;

use common::*;
use egret::{record::Record, semconv as sc};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Providers by name, and 127.0.0.1 (plain HTTP) as a generic route;
/// everything else denied.
const GATEWAY: &str = "gateways:
- name: direct
  defaultPolicy: deny-all
  routes:
  - {name: anthropic, hosts: [api.anthropic.com], provider: anthropic}
  - {name: openai, hosts: [api.openai.com], provider: openai}
  - {name: local, hosts: ['127.0.0.1'], provider: http}
";

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2", b"http/1.1"];

const ANTHROPIC_REQUEST: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"where do herons nest?"}]}"#;

fn i(r: &Record, key: &str) -> i64 {
    r.get_i64(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", r.to_json_line()))
}

fn s<'a>(r: &'a Record, key: &str) -> &'a str {
    r.get_str(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", r.to_json_line()))
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

fn anthropic_request(c: &Client, body: &'static str) -> http::Request<TestBody> {
    c.request("POST", "/v1/messages")
        .header("content-type", "application/json")
        .header("x-api-key", "sk-ant-direct-not-a-real-key")
        .header("anthropic-version", "2023-06-01")
        .body(full(body))
        .unwrap()
}

/// Nothing else was recorded: call once every connection's serving task
/// has ended (records are emitted before it ends).
fn assert_no_more_records(h: &mut Harness) {
    if let Ok(r) = h.records.try_recv() {
        panic!("unexpected record: {}", r.to_json_line());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_json_exchange_over_http1_is_one_transaction_record() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("api.anthropic.com", H1).await;
    assert!(!c.is_h2());
    let (head, body) = c.exchange(anthropic_request(&c, ANTHROPIC_REQUEST)).await;
    assert_eq!(head.status, 200);
    assert_eq!(body, ANTHROPIC_MESSAGE.as_bytes(), "relayed unchanged");
    c.close().await;

    let r = h.record().await;
    assert_no_more_records(&mut h);
    assert_eq!(r.kind(), sc::KIND_TRANSACTION);
    assert_eq!(s(&r, sc::COMPONENT), sc::COMPONENT_PROXY);
    assert_eq!(s(&r, sc::HTTP_REQUEST_METHOD), "POST");
    assert_eq!(s(&r, sc::URL_PATH), "/v1/messages");
    assert_eq!(i(&r, sc::HTTP_RESPONSE_STATUS_CODE), 200);
    assert_eq!(s(&r, sc::NETWORK_PROTOCOL_VERSION), "1.1");
    assert_eq!(s(&r, sc::SERVER_ADDRESS), "api.anthropic.com");
    assert_eq!(
        i(&r, sc::SERVER_PORT),
        i64::from(h.upstream.tls_addr.port())
    );
    assert_eq!(s(&r, sc::GATEWAY_NAME), "direct");
    assert_eq!(s(&r, sc::ROUTE_NAME), "anthropic");
    assert_eq!(r.get_bool(sc::POLICY_DENIED), Some(false));
    // Attribution, as the kernel tag resolved it.
    assert_eq!(s(&r, sc::INVOCATION_ID), "inv-direct-1");
    assert_eq!(s(&r, sc::AGENT_NAMESPACE), "tests");
    assert_eq!(s(&r, sc::AGENT_NAME), "agent-a");
    assert_eq!(s(&r, sc::ATTRIBUTION_SOURCE), sc::ATTRIBUTION_SOURCE_KERNEL);
    assert_eq!(s(&r, sc::SOCKET_COOKIE), "4242");
    // The exchange as the provider parser saw it.
    assert_eq!(s(&r, sc::GEN_AI_PROVIDER_NAME), "anthropic");
    assert_eq!(s(&r, sc::GEN_AI_OPERATION_NAME), "chat");
    assert_eq!(s(&r, sc::GEN_AI_REQUEST_MODEL), "claude-sonnet-4-5");
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_MODEL),
        "claude-sonnet-4-5-20250929"
    );
    assert_eq!(s(&r, sc::GEN_AI_RESPONSE_ID), "msg_01direct");
    assert_eq!(i(&r, sc::GEN_AI_USAGE_INPUT_TOKENS), 12);
    assert_eq!(i(&r, sc::GEN_AI_USAGE_OUTPUT_TOKENS), 16);
    assert!(r.to_json_line().contains(&format!(
        "\"{}\":[\"end_turn\"]",
        sc::GEN_AI_RESPONSE_FINISH_REASONS
    )));
    // Bodies and sizes.
    assert_eq!(i(&r, sc::REQ_BYTES), ANTHROPIC_REQUEST.len() as i64);
    assert_eq!(i(&r, sc::RESP_BYTES), ANTHROPIC_MESSAGE.len() as i64);
    assert_eq!(s(&r, sc::REQUEST_BODY), ANTHROPIC_REQUEST);
    assert_eq!(s(&r, sc::RESPONSE_BODY), ANTHROPIC_MESSAGE);
    assert_eq!(r.get_bool(sc::BODY_TRUNCATED), Some(false));
    assert_eq!(s(&r, sc::RESPONSE_CONTENT_TYPE), "application/json");
    // The L4 window: the sandbox sent and received bytes; the handshake is
    // on the connection's first record.
    assert!(i(&r, sc::L4_BYTES_SANDBOX_TX) > ANTHROPIC_REQUEST.len() as i64);
    assert!(i(&r, sc::L4_BYTES_SANDBOX_RX) > ANTHROPIC_MESSAGE.len() as i64);
    assert!(i(&r, sc::L4_HANDSHAKE_BYTES_SANDBOX_TX) > 0);
    assert!(i(&r, sc::L4_BYTES_UPSTREAM) > 0);
    // The credential is forwarded but recorded only as a key id.
    assert_eq!(s(&r, sc::API_KEY_ID).len(), 16);
    assert!(!r.to_json_line().contains("sk-ant-direct-not-a-real-key"));
    assert!(r.get(sc::ERROR_TYPE).is_none(), "{}", r.to_json_line());

    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(seen[0].version, http::Version::HTTP_11);
    assert_eq!(seen[0].body, ANTHROPIC_REQUEST.as_bytes());
    assert_eq!(seen[0].headers["x-api-key"], "sk-ant-direct-not-a-real-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream_is_relayed_as_it_arrives_and_usage_is_recorded_but_hidden() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("api.openai.com", H1).await;
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"name a wading bird"}]}"#;
    let req = c
        .request("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-direct-not-a-real-key")
        .header("x-test-gate", "1")
        .body(full(body))
        .unwrap();
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The provider holds the rest of the stream until the first event has
    // reached the client: a proxy that buffered would never deliver it.
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\n\n") {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("first event not relayed while the stream is open")
            .expect("stream ended before its first event")
            .expect("frame");
        if let Ok(d) = frame.into_data() {
            got.extend_from_slice(&d);
        }
    }
    assert!(String::from_utf8_lossy(&got).contains("\"Egr\""));
    h.upstream.state.gate.notify_one();
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("rest of the stream")
        .expect("body")
        .to_bytes();
    got.extend_from_slice(&rest);
    let got = String::from_utf8(got).unwrap();
    assert!(got.ends_with("data: [DONE]\n\n"), "{got}");
    // egret asked the provider for usage and hid the extra chunk.
    assert!(!got.contains("usage"), "client saw the usage chunk: {got}");
    assert_eq!(got, openai_events(false).concat());
    let seen = h.upstream.seen();
    assert_eq!(
        json(&seen[0].body)["stream_options"]["include_usage"],
        true,
        "request rewritten to ask for usage"
    );
    c.close().await;

    let r = h.record().await;
    assert_eq!(s(&r, sc::GEN_AI_PROVIDER_NAME), "openai");
    assert_eq!(s(&r, sc::GEN_AI_REQUEST_MODEL), "gpt-4o-mini");
    assert_eq!(s(&r, sc::GEN_AI_RESPONSE_MODEL), "gpt-4o-mini-2024-07-18");
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
    assert_eq!(i(&r, sc::GEN_AI_USAGE_INPUT_TOKENS), 9);
    assert_eq!(i(&r, sc::GEN_AI_USAGE_OUTPUT_TOKENS), 3);
    assert_eq!(r.get_bool(sc::BODY_REQUEST_REWRITTEN), Some(true));
    assert_eq!(r.get_bool(sc::BODY_USAGE_VISIBLE), Some(false));
    assert_eq!(s(&r, sc::RESPONSE_CONTENT_TYPE), "text/event-stream");
    assert!(s(&r, sc::RESPONSE_BODY).starts_with("data: "));
    // `egret.resp.bytes` is the body as received from the provider: with
    // the usage chunk the client never saw.
    assert_eq!(
        i(&r, sc::RESP_BYTES),
        openai_events(true).concat().len() as i64
    );
    assert!(got.len() < openai_events(true).concat().len());
    assert!(!r.to_json_line().contains("sk-direct-not-a-real-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_stream_over_http2_is_relayed_whole_and_usage_extracted() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("api.anthropic.com", H2).await;
    assert!(c.is_h2());
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"herons?"}]}"#;
    let (head, got) = c.exchange(anthropic_request(&c, body)).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.headers[http::header::CONTENT_TYPE],
        "text/event-stream"
    );
    assert_eq!(got, anthropic_events().concat().as_bytes());
    c.close().await;

    let r = h.record().await;
    assert_eq!(s(&r, sc::NETWORK_PROTOCOL_VERSION), "2");
    assert_eq!(s(&r, sc::GEN_AI_PROVIDER_NAME), "anthropic");
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
    assert_eq!(s(&r, sc::GEN_AI_RESPONSE_ID), "msg_02stream");
    assert_eq!(i(&r, sc::GEN_AI_USAGE_INPUT_TOKENS), 12);
    assert_eq!(i(&r, sc::GEN_AI_USAGE_OUTPUT_TOKENS), 16);
    assert!(s(&r, sc::RESPONSE_BODY).starts_with("event: message_start"));
    assert_eq!(i(&r, sc::RESP_BYTES), got.len() as i64);
    // An h2 sandbox connection is offered h2 upstream.
    assert_eq!(h.upstream.seen()[0].version, http::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_on_one_connection_are_one_record_each() {
    let mut h = Harness::new(GATEWAY).await;
    let c = h.tls_client("api.openai.com", H2).await;
    let sizes = [1000usize, 2000, 3000];
    let sends = sizes.iter().map(|n| {
        let mut s = c.h2_sender();
        let req = c
            .request("GET", &format!("/big/{n}"))
            .body(empty())
            .unwrap();
        async move {
            let resp = s.send_request(req).await.expect("h2 response");
            read(resp).await
        }
    });
    let got = tokio::time::timeout(DEADLINE, futures_util::future::join_all(sends))
        .await
        .expect("three concurrent streams");
    for ((head, body), n) in got.iter().zip(sizes) {
        assert_eq!(head.status, 200);
        assert_eq!(body.len(), n);
    }
    c.close().await;

    let mut recs = Vec::new();
    for _ in 0..3 {
        recs.push(h.record().await);
    }
    assert_no_more_records(&mut h);
    let mut got: Vec<i64> = recs.iter().map(|r| i(r, sc::RESP_BYTES)).collect();
    got.sort();
    assert_eq!(got, [1000, 2000, 3000]);
    for r in &recs {
        assert_eq!(s(r, sc::NETWORK_PROTOCOL_VERSION), "2");
        assert_eq!(i(r, sc::HTTP_RESPONSE_STATUS_CODE), 200);
        assert!(s(r, sc::URL_PATH).starts_with("/big/"));
    }
    // Each stream is its own span of the connection's bytes.
    let ids: std::collections::HashSet<&str> = recs.iter().map(|r| s(r, sc::SPAN_ID)).collect();
    assert_eq!(ids.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_the_policy_does_not_allow_gets_403_and_a_denied_record() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("denied.example", H1).await;
    let req = c
        .request("POST", "/v1/anything")
        .header("content-type", "application/json")
        .body(full(r#"{"exfiltrate":true}"#))
        .unwrap();
    let (head, body) = c.exchange(req).await;
    assert_eq!(head.status, 403);
    assert_eq!(head.headers[http::header::CONTENT_TYPE], "application/json");
    let v = json(&body);
    assert_eq!(v["error"]["type"], "egress_denied", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("denied.example: destination not allowed"));
    c.close().await;

    let r = h.record().await;
    assert_no_more_records(&mut h);
    assert_eq!(i(&r, sc::HTTP_RESPONSE_STATUS_CODE), 403);
    assert_eq!(s(&r, sc::ERROR_TYPE), "policy_denied");
    assert_eq!(r.get_bool(sc::POLICY_DENIED), Some(true));
    assert_eq!(r.get_bool(sc::ROUTE_MATCHED), Some(false));
    assert_eq!(s(&r, sc::SERVER_ADDRESS), "denied.example");
    assert_eq!(s(&r, sc::URL_PATH), "/v1/anything");
    assert!(h.upstream.seen().is_empty(), "never sent upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_header_that_is_not_the_sni_gets_421() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("api.openai.com", H1).await;
    let req = http::Request::builder()
        .method("GET")
        .uri("/headers")
        .header(http::header::HOST, "evil.example")
        .body(empty())
        .unwrap();
    let (head, body) = c.exchange(req).await;
    assert_eq!(head.status, 421);
    assert_eq!(json(&body)["error"]["type"], "host_sni_mismatch");
    c.close().await;
    let r = h.record().await;
    assert_eq!(s(&r, sc::ERROR_TYPE), "host_sni_mismatch");
    assert_eq!(r.get_bool(sc::POLICY_DENIED), Some(true));
    assert_eq!(s(&r, sc::SERVER_ADDRESS), "api.openai.com");
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_token_budget_refuses_with_429_in_the_providers_format() {
    let mut h = Harness::new(&format!(
        "{GATEWAY}  budgets:\n  - {{namespace: tests, name: '', dailyTokens: 20}}\n"
    ))
    .await;
    let mut c = h.tls_client("api.anthropic.com", H1).await;
    let (head, _) = c.exchange(anthropic_request(&c, ANTHROPIC_REQUEST)).await;
    assert_eq!(head.status, 200, "within the budget");
    // The first exchange's tokens (12 + 16) are counted when its record is.
    let first = h.record().await;
    assert_eq!(i(&first, sc::BUDGET_DAILY_MAX), 20);
    assert_eq!(i(&first, sc::BUDGET_DAILY_USED), 28);
    assert_eq!(first.get_bool(sc::BUDGET_DENIED), Some(false));

    let (head, body) = c.exchange(anthropic_request(&c, ANTHROPIC_REQUEST)).await;
    assert_eq!(head.status, 429);
    let v = json(&body);
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("28 of 20 tokens"));
    c.close().await;
    let r = h.record().await;
    assert_no_more_records(&mut h);
    assert_eq!(i(&r, sc::HTTP_RESPONSE_STATUS_CODE), 429);
    assert_eq!(s(&r, sc::ERROR_TYPE), "budget_exhausted");
    assert_eq!(r.get_bool(sc::BUDGET_DENIED), Some(true));
    assert_eq!(i(&r, sc::BUDGET_DAILY_USED), 28);
    assert_eq!(r.get_bool(sc::POLICY_DENIED), Some(false));
    assert_eq!(
        h.upstream.seen().len(),
        1,
        "the refused request stayed here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_created_or_extended_and_sent_upstream() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("api.openai.com", H1).await;

    // No trace context from the sandbox: the invocation's own trace, the
    // call a child of the invocation span (both derived from the
    // invocation id, the same for every call), sampled.
    let (_, body) = c
        .exchange(c.request("GET", "/headers").body(empty()).unwrap())
        .await;
    let sent = json(&body)["traceparent"].as_str().unwrap().to_owned();
    let r = h.record().await;
    let (trace, span) = (s(&r, sc::TRACE_ID), s(&r, sc::SPAN_ID));
    assert_eq!((trace.len(), span.len()), (32, 16));
    assert_eq!(sent, format!("00-{trace}-{span}-01"));
    let root = egret::attribution::Attribution {
        invocation_id: r.invocation_id().unwrap().to_owned(),
        ..Default::default()
    }
    .trace_root();
    assert_eq!(
        (trace, s(&r, sc::PARENT_SPAN_ID)),
        (root.trace_id.as_str(), root.span_id.as_str())
    );
    let (_, body) = c
        .exchange(c.request("GET", "/headers").body(empty()).unwrap())
        .await;
    let again = json(&body)["traceparent"].as_str().unwrap().to_owned();
    let r2 = h.record().await;
    assert_eq!(
        s(&r2, sc::TRACE_ID),
        root.trace_id,
        "one trace per invocation"
    );
    assert_ne!(s(&r2, sc::SPAN_ID), span);
    assert!(again.contains(&root.trace_id));

    // The sandbox's own traceparent is the parent; its flags are kept.
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let req = c
        .request("GET", "/headers")
        .header("traceparent", theirs)
        .body(empty())
        .unwrap();
    let (_, body) = c.exchange(req).await;
    let sent = json(&body)["traceparent"].as_str().unwrap().to_owned();
    let r = h.record().await;
    assert_eq!(s(&r, sc::TRACE_ID), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(s(&r, sc::PARENT_SPAN_ID), "b7ad6b7169203331");
    assert_eq!(
        sent,
        format!(
            "00-0af7651916cd43dd8448eb211c80319c-{}-00",
            s(&r, sc::SPAN_ID)
        )
    );
    c.close().await;

    // The invocation's registered trace context, when the sandbox sends
    // none: its trace, the call under the invocation span (whose parent is
    // the registered span), tracestate passed on.
    let mut a = attribution();
    a.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    a.tracestate = Some("egret=direct".into());
    let origin = h.origin(h.upstream.tls_addr, Some(a));
    let mut c = h.tls_client_from(origin, "api.openai.com", H1).await;
    let (_, body) = c
        .exchange(c.request("GET", "/headers").body(empty()).unwrap())
        .await;
    let seen = json(&body);
    let r = h.record().await;
    assert_eq!(s(&r, sc::TRACE_ID), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        s(&r, sc::PARENT_SPAN_ID),
        egret::attribution::invocation_span_id(r.invocation_id().unwrap())
    );
    assert_eq!(
        seen["traceparent"],
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            s(&r, sc::SPAN_ID)
        )
    );
    assert_eq!(seen["tracestate"], "egret=direct");
    c.close().await;
    assert_no_more_records(&mut h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_response_reaches_the_client_compressed_and_is_recorded_decoded() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("api.openai.com", H1).await;
    let (head, body) = c
        .exchange(c.request("GET", "/gzip").body(empty()).unwrap())
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers[http::header::CONTENT_ENCODING], "gzip");
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
        .unwrap();
    assert_eq!(plain, GZIP_JSON, "the client got the provider's gzip bytes");
    c.close().await;

    let r = h.record().await;
    assert_eq!(s(&r, sc::RESPONSE_CONTENT_ENCODING), "gzip");
    assert_eq!(s(&r, sc::RESPONSE_BODY), GZIP_JSON);
    assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(false));
    assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(false));
    assert!(r.get(sc::RESPONSE_BODY_DECODE_ERROR).is_none());
    assert_eq!(i(&r, sc::RESP_BYTES), body.len() as i64, "wire bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_cap_bounds_the_recorded_body_not_the_relayed_one() {
    let mut h = Harness::new(&format!("{GATEWAY}  captureBody: {{maxBytes: 1024}}\n")).await;
    let mut c = h.tls_client("api.openai.com", H1).await;
    let (head, body) = c
        .exchange(c.request("GET", "/big/10000").body(empty()).unwrap())
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(body.len(), 10_000, "every byte relayed");
    c.close().await;

    let r = h.record().await;
    assert_eq!(i(&r, sc::RESP_BYTES), 10_000);
    assert_eq!(s(&r, sc::RESPONSE_BODY).len(), 1024);
    assert_eq!(s(&r, sc::RESPONSE_BODY).as_bytes(), &body[..1024]);
    assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(true));
    assert_eq!(r.get_bool(sc::BODY_TRUNCATED), Some(true));
    assert_eq!(i(&r, sc::BODY_BYTES), 1024);
    assert!(r.get(sc::ERROR_TYPE).is_none(), "{}", r.to_json_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_streams_through_the_request_tap() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("api.openai.com", H1).await;
    let parts = vec![
        r#"{"model":"gpt-4o-mini","#,
        r#""messages":[{"role":"user","#,
        r#""content":"streamed"}]}"#,
    ];
    let whole = parts.concat();
    let req = c
        .request("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(chunked(parts))
        .unwrap();
    let (head, body) = c.exchange(req).await;
    assert_eq!(head.status, 200);
    assert_eq!(body, OPENAI_COMPLETION.as_bytes());
    c.close().await;

    let seen = h.upstream.seen();
    assert_eq!(seen[0].body, whole.as_bytes(), "the provider got it whole");
    let r = h.record().await;
    assert_eq!(s(&r, sc::REQUEST_BODY), whole);
    assert_eq!(i(&r, sc::REQ_BYTES), whole.len() as i64);
    assert_eq!(r.get_bool(sc::REQ_TRUNCATED), Some(false));
    assert_eq!(i(&r, sc::GEN_AI_USAGE_OUTPUT_TOKENS), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_served_and_recorded_under_the_verified_host() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.plain_client().await;
    let (head, body) = c
        .exchange(c.request("GET", "/headers").body(empty()).unwrap())
        .await;
    assert_eq!(head.status, 200);
    assert!(json(&body)["traceparent"].is_string());
    c.close().await;

    let r = h.record().await;
    assert_no_more_records(&mut h);
    assert_eq!(s(&r, sc::SERVER_ADDRESS), "127.0.0.1");
    assert_eq!(s(&r, sc::ROUTE_NAME), "local");
    assert_eq!(s(&r, sc::NETWORK_PROTOCOL_VERSION), "1.1");
    assert_eq!(i(&r, sc::HTTP_RESPONSE_STATUS_CODE), 200);
    assert!(r.get(sc::L4_HANDSHAKE_BYTES_SANDBOX_TX).is_none(), "no TLS");
    assert_eq!(h.upstream.seen()[0].path, "/headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_gets_502_and_an_upstream_connect_record() {
    let mut h = Harness::new(GATEWAY).await;
    // A port nothing listens on any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let origin = h.origin(closed, Some(attribution()));
    let mut c = h.tls_client_from(origin, "api.openai.com", H1).await;
    let (head, body) = c
        .exchange(c.request("GET", "/headers").body(empty()).unwrap())
        .await;
    assert_eq!(head.status, 502);
    assert_eq!(json(&body)["error"]["type"], "upstream_error");
    c.close().await;
    let r = h.record().await;
    assert_eq!(i(&r, sc::HTTP_RESPONSE_STATUS_CODE), 502);
    assert_eq!(s(&r, sc::ERROR_TYPE), "upstream_connect");
}

/// Reads what the proxy answers on a raw connection until it closes it.
async fn raw_exchange(h: &Harness, request: &[u8]) -> String {
    let origin = h.origin(h.upstream.plain_addr, Some(attribution()));
    let (mut stream, served) = h.serve_plain(origin);
    stream.write_all(request).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("serving ends")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_head_gets_400_and_a_malformed_request_record() {
    let mut h = Harness::new(GATEWAY).await;
    let before = egret::proxy::http::MALFORMED_REQUESTS.load(std::sync::atomic::Ordering::Relaxed);
    let out = raw_exchange(&h, b"GET /headers HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out:?}");
    // hyper answers before any request reaches egret's handler; the
    // failure is still a record (who, where, what was answered) and a
    // counter, never a silent gap.
    let r = h.record().await;
    assert_eq!(i(&r, sc::HTTP_RESPONSE_STATUS_CODE), 400);
    assert_eq!(s(&r, sc::ERROR_TYPE), "malformed_request");
    assert_eq!(s(&r, sc::INVOCATION_ID), "inv-direct-1");
    assert_eq!(
        r.get_str(sc::HTTP_REQUEST_METHOD),
        None,
        "no method was parsed"
    );
    assert!(
        egret::proxy::http::MALFORMED_REQUESTS.load(std::sync::atomic::Ordering::Relaxed) > before
    );
    assert_no_more_records(&mut h);
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_cut_short_gets_400_and_a_client_body_error_record() {
    let mut h = Harness::new(GATEWAY).await;
    let host = h.upstream.plain_addr;
    let req = format!(
        "POST /v1/upload HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"cut\":"
    );
    let out = raw_exchange(&h, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out:?}");
    assert!(out.contains("bad_request"), "{out:?}");
    let r = h.record().await;
    assert_eq!(i(&r, sc::HTTP_RESPONSE_STATUS_CODE), 400);
    assert_eq!(s(&r, sc::ERROR_TYPE), "client_body_error");
    assert_eq!(s(&r, sc::URL_PATH), "/v1/upload");
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_upgrade_is_refused_with_501() {
    // WebSocket upgrades are relayed (bpf-tests/tests/websocket.rs); any
    // other protocol switch, h2c here, is refused.
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("api.openai.com", H1).await;
    let req = c
        .request("GET", "/v1/models")
        .header(http::header::CONNECTION, "Upgrade, HTTP2-Settings")
        .header(http::header::UPGRADE, "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(empty())
        .unwrap();
    let (head, body) = c.exchange(req).await;
    assert_eq!(head.status, 501);
    assert_eq!(json(&body)["error"]["type"], "upgrade_refused");
    c.close().await;
    let r = h.record().await;
    assert_eq!(s(&r, sc::ERROR_TYPE), "upgrade_refused");
    assert_eq!(i(&r, sc::HTTP_RESPONSE_STATUS_CODE), 501);
    assert!(r.get(sc::POLICY_DENIED).is_none(), "{}", r.to_json_line());
    assert!(h.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_at_its_request_limit_gets_429_until_its_stream_ends() {
    let mut h = Harness::new(&format!(
        "node:\n  limits: {{maxRequestsPerSandbox: 1}}\n{GATEWAY}"
    ))
    .await;
    let mut c = h.tls_client("api.openai.com", H2).await;
    // A stream held open by the provider (gated) is the one request the
    // sandbox may have in flight.
    let streaming = c
        .request("POST", "/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-test-gate", "1")
        .body(full(
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#,
        ))
        .unwrap();
    let held = c.send(streaming).await;
    assert_eq!(held.status(), 200);
    let (head, body) = c
        .exchange(c.request("GET", "/headers").body(empty()).unwrap())
        .await;
    assert_eq!(head.status, 429);
    assert_eq!(json(&body)["error"]["type"], "sandbox_request_limit");
    let refused = h.record().await;
    assert_eq!(s(&refused, sc::ERROR_TYPE), "sandbox_request_limit");
    assert_eq!(s(&refused, sc::URL_PATH), "/headers");

    // Once the stream has ended, the next request goes through.
    h.upstream.state.gate.notify_one();
    let (_, streamed) = read(held).await;
    assert!(streamed.ends_with(b"data: [DONE]\n\n"));
    let ended = h.record().await;
    assert_eq!(s(&ended, sc::URL_PATH), "/v1/chat/completions");
    let (head, _) = c
        .exchange(c.request("GET", "/headers").body(empty()).unwrap())
        .await;
    assert_eq!(head.status, 200);
    c.close().await;
    let ok = h.record().await;
    assert_eq!(i(&ok, sc::HTTP_RESPONSE_STATUS_CODE), 200);
    assert_no_more_records(&mut h);
    assert_eq!(h.upstream.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_the_exchange_in_flight_finish_then_closes_the_connection() {
    let mut h = Harness::new(GATEWAY).await;
    let mut c = h.tls_client("api.anthropic.com", H1).await;
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"stream":true,"messages":[]}"#;
    let mut req = anthropic_request(&c, body);
    req.headers_mut()
        .insert("x-test-gate", http::HeaderValue::from_static("1"));
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);

    // Shutdown starts while the stream is open: it is not cut.
    h.l7.drain.started.cancel();
    h.upstream.state.gate.notify_one();
    let (_, got) = read(resp).await;
    assert_eq!(got, anthropic_events().concat().as_bytes());
    // Then the proxy closes the (keep-alive) connection by itself.
    c.closed_by_proxy().await;
    let r = h.record().await;
    assert_eq!(i(&r, sc::HTTP_RESPONSE_STATUS_CODE), 200);
    assert_eq!(i(&r, sc::GEN_AI_USAGE_OUTPUT_TOKENS), 16);
    assert!(r.get(sc::ERROR_TYPE).is_none(), "{}", r.to_json_line());
    assert_no_more_records(&mut h);
}
