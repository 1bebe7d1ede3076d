//! L7 capture end to end: a sandbox (real cgroup, kernel redirect) talks to
//! the providers' real hostnames with the official SDKs and curl; egret
//! terminates TLS with the node CA, forwards to our mock provider over TLS
//! and records each exchange. Provider names resolve (for the sandbox
//! process only) to a loopback address of the test's own.
use std::{
    io::BufRead,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bpf_tests::{world::*, *};
use egret::{record::Record, semconv as sc};
use serde_json::Value;

fn i(rec: &Record, key: &str) -> i64 {
    rec.get_i64(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", rec.to_json_line()))
}

fn by_path<'a>(recs: &'a [Record], path: &str, stream: bool) -> &'a Record {
    recs.iter()
        .find(|r| {
            r.get_str(sc::URL_PATH).is_some_and(|p| p.contains(path))
                && r.get_bool(sc::GEN_AI_REQUEST_STREAM).unwrap_or(false) == stream
        })
        .unwrap_or_else(|| {
            panic!(
                "no transaction for {path} stream={stream} in:\n{}",
                recs.iter()
                    .map(Record::to_json_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
}

fn usage(v: &Value) -> (i64, i64) {
    (
        v["usage"]["input_tokens"].as_i64().unwrap_or(-1),
        v["usage"]["output_tokens"].as_i64().unwrap_or(-1),
    )
}

fn tokens(r: &Record) -> (i64, i64) {
    (
        i(r, sc::GEN_AI_USAGE_INPUT_TOKENS),
        i(r, sc::GEN_AI_USAGE_OUTPUT_TOKENS),
    )
}

/// No credential ever reaches a record.
fn assert_no_secrets(recs: &[Record], secret: &str) {
    for r in recs {
        let line = r.to_json_line();
        assert!(!line.contains(secret), "credential leaked into {line}");
    }
}

#[test]
fn openai_sdk_through_egret_json_streams_rewrite_and_credentials() {
    if !require_privileges("openai_sdk") || !require_venv("openai_sdk") {
        return;
    }
    let w = World::start("");
    let inv = unique("inv-openai-");
    let cg = w.sandbox(&inv, None);
    let calls = w.sdk(&cg, "openai_client.py");
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:?}");
    let recs = w.transactions(&inv, calls.len());
    assert_no_secrets(&recs, "sk-test-not-a-real-key");
    let call = |name: &str| calls.iter().find(|c| c["call"] == name).unwrap();

    let chat = by_path(&recs, "/v1/chat/completions", false);
    assert_eq!(chat.get_str(sc::GEN_AI_PROVIDER_NAME), Some("openai"));
    assert_eq!(chat.get_str(sc::GEN_AI_OPERATION_NAME), Some("chat"));
    assert_eq!(chat.get_str(sc::GEN_AI_REQUEST_MODEL), Some("gpt-4o-mini"));
    assert_eq!(tokens(chat), usage(call("chat")));
    // The request's parameters as the SDK sent them (max_completion_tokens).
    assert_eq!(chat.get_i64(sc::GEN_AI_REQUEST_MAX_TOKENS), Some(64));
    assert_eq!(chat.get(sc::GEN_AI_REQUEST_TEMPERATURE), None);
    let rs = by_path(&recs, "/v1/responses", true);
    assert_eq!(rs.get_i64(sc::GEN_AI_REQUEST_MAX_TOKENS), Some(5));
    assert_eq!(i(chat, sc::HTTP_RESPONSE_STATUS_CODE), 200);
    assert!(chat.get_str(sc::API_KEY_ID).is_some_and(|k| k.len() == 16));
    assert!(chat
        .get_str(sc::RESPONSE_BODY)
        .is_some_and(|b| b.contains("chatcmpl")));
    assert_eq!(chat.get_str(sc::SERVER_ADDRESS), Some("api.openai.com"));

    // The SDK did not ask for usage: egret asked for it, recorded it and hid
    // the extra chunk, so the client saw exactly what it asked for.
    let hidden: Vec<&Record> = recs
        .iter()
        .filter(|r| r.get_bool(sc::BODY_REQUEST_REWRITTEN) == Some(true))
        .collect();
    assert_eq!(hidden.len(), 1, "one rewritten stream");
    let h = hidden[0];
    assert_eq!(h.get_bool(sc::BODY_USAGE_VISIBLE), Some(false));
    assert_eq!(h.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
    // Streams carry their time to first chunk (seconds, within the
    // exchange's duration); whole answers do not.
    let ttfc = h
        .get(sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK)
        .and_then(|v| match v {
            egret::record::AttrValue::Float(f) => Some(*f),
            _ => None,
        })
        .expect("time to first chunk");
    let duration_ms = match h.get(sc::DURATION_MS) {
        Some(egret::record::AttrValue::Float(f)) => *f,
        other => panic!("duration {other:?}"),
    };
    assert!(
        ttfc > 0.0 && ttfc * 1e3 <= duration_ms,
        "{ttfc} s, {duration_ms} ms"
    );
    assert_eq!(chat.get(sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK), None);
    assert!(i(h, sc::GEN_AI_USAGE_OUTPUT_TOKENS) > 0);
    assert_eq!(
        call("chat_stream")["usage"],
        Value::Null,
        "client saw a usage chunk it did not ask for"
    );
    let visible = recs
        .iter()
        .find(|r| {
            r.get_bool(sc::GEN_AI_REQUEST_STREAM) == Some(true)
                && r.get_bool(sc::BODY_USAGE_VISIBLE) == Some(true)
                && r.get_str(sc::URL_PATH) == Some("/v1/chat/completions")
        })
        .expect("the stream that asked for usage");
    assert_eq!(tokens(visible), usage(call("chat_stream_usage")));

    let emb = by_path(&recs, "/v1/embeddings", false);
    assert_eq!(emb.get_str(sc::GEN_AI_OPERATION_NAME), Some("embeddings"));
    for r in &recs {
        assert_eq!(
            r.get_str(sc::AGENT_NAME).map(|n| n.starts_with("agent-")),
            Some(true)
        );
        assert!(i(r, sc::L4_BYTES_SANDBOX_RX) > 0, "{}", r.to_json_line());
        assert!(i(r, sc::L4_BYTES_UPSTREAM) > 0, "{}", r.to_json_line());
    }
}

#[test]
fn anthropic_google_and_mcp_sdks_through_egret() {
    if !require_privileges("anthropic_google_mcp") || !require_venv("anthropic_google_mcp") {
        return;
    }
    let w = World::start(
        "gateways:\n- name: providers\n  routes:\n  - {name: anthropic, hosts: [api.anthropic.com], provider: anthropic}\n  - {name: google, hosts: [generativelanguage.googleapis.com], provider: google}\n  - {name: tools, hosts: [mcp.local], provider: mcp}\n",
    );
    let inv = unique("inv-multi-");
    let cg = w.sandbox(&inv, None);

    let a = w.sdk(&cg, "anthropic_client.py");
    assert!(a.iter().all(|c| c["ok"] == true), "{a:?}");
    let g = w.sdk(&cg, "google_client.py");
    assert!(g.iter().all(|c| c["ok"] == true), "{g:?}");
    let m = w.sdk(&cg, "mcp_client.py");
    assert!(m.iter().all(|c| c["ok"] == true), "{m:?}");
    let recs = w.transactions(&inv, a.len() + g.len() + 3);

    let am = by_path(&recs, "/v1/messages", false);
    assert_eq!(am.get_str(sc::GEN_AI_PROVIDER_NAME), Some("anthropic"));
    assert_eq!(tokens(am).1, usage(&a[0]).1);
    let ams = by_path(&recs, "/v1/messages", true);
    assert_eq!(tokens(ams).1, usage(&a[1]).1);
    assert!(ams.get(sc::GEN_AI_RESPONSE_FINISH_REASONS).is_some());
    // Priced at the shipped table's claude-haiku-4-5 rates (USD per 1M:
    // input 1, cache read 0.1, cache write 1.25, output 5), streamed or not.
    for r in [am, ams] {
        let n = |k: &str| r.get_i64(k).unwrap_or(0) as f64;
        let (cr, cw) = (
            n(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
            n(sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS),
        );
        let want = ((n(sc::GEN_AI_USAGE_INPUT_TOKENS) - cr - cw) * 1.0
            + cr * 0.1
            + cw * 1.25
            + n(sc::GEN_AI_USAGE_OUTPUT_TOKENS) * 5.0)
            / 1e6;
        let got = match r.get(sc::COST_USD) {
            Some(egret::record::AttrValue::Float(f)) => *f,
            other => panic!("egret.cost.usd: {other:?}: {}", r.to_json_line()),
        };
        assert!(
            (got - want).abs() < 1e-12,
            "cost {got} != {want}: {}",
            r.to_json_line()
        );
        assert!(r.get_str(sc::COST_SOURCE).unwrap().starts_with("default:"));
    }

    let gj = by_path(&recs, ":generateContent", false);
    assert_eq!(gj.get_str(sc::GEN_AI_PROVIDER_NAME), Some("gcp.gemini"));
    assert_eq!(tokens(gj), usage(&g[0]));
    let gs = by_path(&recs, ":streamGenerateContent", true);
    assert_eq!(tokens(gs), usage(&g[1]));
    // The usage split by modality is what the SDK parsed out of
    // promptTokensDetails / candidatesTokensDetails (the last chunk's, for
    // the stream).
    for (r, sdk) in [(gj, &g[0]), (gs, &g[1])] {
        for (key, list) in [
            (sc::GEN_AI_USAGE_TEXT_INPUT_TOKENS, "prompt_by_modality"),
            (
                sc::GEN_AI_USAGE_TEXT_OUTPUT_TOKENS,
                "candidates_by_modality",
            ),
        ] {
            let want = sdk["usage"][list]["TEXT"].as_i64();
            assert!(want.is_some_and(|n| n > 0), "{sdk}");
            assert_eq!(r.get_i64(key), want, "{key}: {}", r.to_json_line());
        }
        assert_eq!(r.get(sc::GEN_AI_USAGE_IMAGE_INPUT_TOKENS), None);
    }

    let tool = recs
        .iter()
        .find(|r| r.get_str(sc::MCP_METHOD_NAME) == Some("tools/call"))
        .expect("an MCP tools/call transaction");
    assert_eq!(tool.get_str(sc::GEN_AI_TOOL_NAME), Some("echo"));
    assert!(tool.get_str(sc::MCP_SESSION_ID).is_some());
    assert!(recs
        .iter()
        .any(|r| r.get_str(sc::MCP_METHOD_NAME) == Some("initialize")));
}

/// The decoded, parsed JSON of a record's captured body.
fn body_json(r: &Record, key: &str) -> Value {
    let body = r
        .get_str(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", r.to_json_line()));
    serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {}", r.to_json_line()))
}

/// A non-streamed answer that went over the wire compressed is recorded as
/// its decoded JSON, with its direction's encoding and text flag.
fn assert_decoded_response(r: &Record, encoding: &str) -> Value {
    assert_eq!(
        r.get_str(sc::RESPONSE_CONTENT_ENCODING),
        Some(encoding),
        "{}",
        r.to_json_line()
    );
    assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(false));
    assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(false));
    assert!(r.get(sc::RESPONSE_BODY_DECODE_ERROR).is_none());
    body_json(r, sc::RESPONSE_BODY)
}

#[test]
fn sdk_compressed_answers_are_recorded_decoded() {
    if !require_privileges("compressed_answers") || !require_venv("compressed_answers") {
        return;
    }
    let w = World::start(
        "gateways:\n- name: providers\n  routes:\n  - {name: anthropic, hosts: [api.anthropic.com], provider: anthropic}\n  - {name: openai, hosts: [api.openai.com], provider: openai}\n  - {name: google, hosts: [generativelanguage.googleapis.com], provider: google}\n",
    );
    let inv = unique("inv-gz-");
    let cg = w.sandbox(&inv, None);
    // The official SDKs send `Accept-Encoding: gzip, deflate`: the mock
    // answers gzip, as the providers do.
    let a = w.sdk(&cg, "anthropic_client.py");
    assert!(a.iter().all(|c| c["ok"] == true), "{a:?}");
    let o = w.sdk(&cg, "openai_client.py");
    assert!(o.iter().all(|c| c["ok"] == true), "{o:?}");
    let g = w.sdk(&cg, "google_client.py");
    assert!(g.iter().all(|c| c["ok"] == true), "{g:?}");
    let recs = w.transactions(&inv, a.len() + o.len() + g.len());

    let am = by_path(&recs, "/v1/messages", false);
    let v = assert_decoded_response(am, "gzip");
    assert_eq!(v["id"], a[0]["id"]);
    assert_eq!(v["type"], "message");
    // (egret's input tokens add the cached ones: compare the output.)
    assert_eq!(Some(tokens(am).1), v["usage"]["output_tokens"].as_i64());
    assert_eq!(body_json(am, sc::REQUEST_BODY)["model"], "claude-haiku-4-5");
    assert_eq!(am.get_bool(sc::REQUEST_BODY_B64), Some(false));
    assert!(am.get(sc::REQUEST_CONTENT_ENCODING).is_none());

    let oc = by_path(&recs, "/v1/chat/completions", false);
    let v = assert_decoded_response(oc, "gzip");
    assert_eq!(v["id"], o[0]["id"]);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["usage"]["completion_tokens"],
        o[0]["usage"]["output_tokens"]
    );

    let gj = by_path(&recs, ":generateContent", false);
    let v = assert_decoded_response(gj, "gzip");
    assert_eq!(v["responseId"], g[0]["id"]);
    assert_eq!(tokens(gj), usage(&g[0]));

    // Streams stay uncompressed (and as they were).
    for s in [
        by_path(&recs, "/v1/messages", true),
        by_path(&recs, ":streamGenerateContent", true),
    ] {
        assert!(
            s.get(sc::RESPONSE_CONTENT_ENCODING).is_none(),
            "{}",
            s.to_json_line()
        );
        assert!(s
            .get_str(sc::RESPONSE_BODY)
            .is_some_and(|b| b.starts_with("event: ") || b.starts_with("data: ")));
    }

    // br (Anthropic's and OpenAI's front ends prefer it when offered), and
    // a gzip-encoded request body: both recorded decoded. curl shows the
    // client still gets the provider's compressed bytes.
    let inv2 = unique("inv-br-");
    let cg2 = w.sandbox(&inv2, None);
    let req = serde_json::json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "three wading birds"}],
    })
    .to_string();
    let gz_path = w.agent.state_dir.join("request.json.gz");
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(req.as_bytes()).unwrap();
        std::fs::write(&gz_path, e.finish().unwrap()).unwrap();
    }
    let out = w.curl(
        &cg2,
        &[
            "-H",
            "accept-encoding: br",
            "-H",
            "content-type: application/json",
            "-H",
            "content-encoding: gzip",
            "-H",
            "x-api-key: sk-ant-test-not-a-real-key",
            "-H",
            "anthropic-version: 2023-06-01",
            "--data-binary",
            &format!("@{}", gz_path.display()),
            "-o",
            "/dev/null",
            "-w",
            "%{content_type} %{size_download}",
            "https://api.anthropic.com/v1/messages",
        ],
    );
    let rec = &w.transactions(&inv2, 1)[0];
    let v = assert_decoded_response(rec, "br");
    assert_eq!(v["type"], "message", "{out}");
    let wire: i64 = out.split_whitespace().last().unwrap().parse().unwrap();
    assert_eq!(i(rec, sc::RESP_BYTES), wire, "the client got the br bytes");
    assert_eq!(rec.get_str(sc::REQUEST_CONTENT_ENCODING), Some("gzip"));
    assert_eq!(rec.get_bool(sc::REQUEST_BODY_B64), Some(false));
    assert_eq!(
        body_json(rec, sc::REQUEST_BODY)["model"],
        "claude-haiku-4-5"
    );
    assert_eq!(tokens(rec), (3, 16));
}

#[test]
fn policy_budget_trace_context_streaming_and_h2() {
    if !require_privileges("policy_budget_trace") {
        return;
    }
    let w = World::start(
        "gateways:\n- name: test-gw\n  defaultPolicy: deny-all\n  routes:\n  - {name: anthropic, hosts: [api.anthropic.com], provider: anthropic}\n  - {name: openai, hosts: ['*.openai.com'], provider: openai}\n  budgets:\n  - {namespace: tests, name: '', dailyTokens: 20}\n",
    );
    // Egress policy: a host no route allows gets a JSON 403, never upstream.
    let inv = unique("inv-policy-");
    let cg = w.sandbox(&inv, None);
    let out = w.curl(
        &cg,
        &["-w", "\n%{http_code}", "https://denied.example/headers"],
    );
    assert!(out.ends_with("\n403"), "{out}");
    assert!(out.contains("egress_denied"), "{out}");
    let denied = w.transactions(&inv, 1);
    assert_eq!(denied[0].get_bool(sc::POLICY_DENIED), Some(true));

    // Trace context: the registered traceparent's trace; the call's span
    // (its id sent upstream) is a child of the invocation span, which is a
    // child of the registered span and is written when the invocation
    // ends (its sandbox unregistered).
    let inv = unique("inv-trace-");
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let sb_id = unique("sb");
    let cg = w.agent.cgroup(&sb_id);
    w.agent.register_with(&sb_id, None, &inv, Some(parent));
    let seen: Value =
        serde_json::from_str(&w.curl(&cg, &["https://api.openai.com/headers"])).unwrap();
    let rec = &w.transactions(&inv, 1)[0];
    let sent = seen["traceparent"]
        .as_str()
        .expect("traceparent sent upstream");
    let span = rec.get_str(sc::SPAN_ID).unwrap();
    assert_eq!(
        sent,
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span}-01")
    );
    let invocation_span = egret::attribution::invocation_span_id(&inv);
    assert_eq!(
        rec.get_str(sc::PARENT_SPAN_ID),
        Some(invocation_span.as_str())
    );
    assert_eq!(
        rec.get_str(sc::TRACE_ID),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert!(seen.get("authorization").is_none());
    w.agent.unregister(&sb_id);
    let recs = w.agent.wait_records("the invocation record", |r| {
        r.iter()
            .any(|x| x.kind() == sc::KIND_INVOCATION && x.invocation_id() == Some(inv.as_str()))
    });
    let invocation: Vec<&Record> = recs
        .iter()
        .filter(|x| x.kind() == sc::KIND_INVOCATION && x.invocation_id() == Some(inv.as_str()))
        .collect();
    assert_eq!(invocation.len(), 1, "one invocation record");
    let ir = invocation[0];
    assert_eq!(ir.get_str(sc::SPAN_ID), Some(invocation_span.as_str()));
    assert_eq!(ir.get_str(sc::PARENT_SPAN_ID), Some("00f067aa0ba902b7"));
    assert_eq!(ir.get_str(sc::TRACE_ID), rec.get_str(sc::TRACE_ID));
    assert_eq!(ir.get_str(sc::GEN_AI_OPERATION_NAME), Some("invoke_agent"));
    let (start, end) = (i(ir, sc::START_TIME), i(ir, sc::END_TIME));
    assert!(
        start <= i(rec, sc::START_TIME) && i(rec, sc::END_TIME) <= end,
        "the invocation span covers its call"
    );

    // Streaming is forwarded as it arrives: the first event reaches the
    // client long before the last (10 events, 150 ms apart).
    let t0 = Instant::now();
    let mut child = sandboxed(&cg, None, "unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(&w.hosts)
        .args([
            "curl",
            "-sSN",
            "--max-time",
            "30",
            "https://api.openai.com/sse/10?interval_ms=150",
        ])
        .env("CURL_CA_BUNDLE", &w.bundle)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines
        .by_ref()
        .find(|l| l.as_ref().is_ok_and(|l| l.starts_with("data:")))
        .expect("an event");
    let first_at = t0.elapsed();
    assert!(first.is_ok());
    let rest = lines
        .filter(|l| l.as_ref().is_ok_and(|l| l.starts_with("data:")))
        .count();
    let last_at = t0.elapsed();
    assert!(child.wait().unwrap().success());
    assert_eq!(rest, 9);
    assert!(
        last_at - first_at >= Duration::from_millis(1200),
        "stream was buffered: first event at {first_at:?}, last at {last_at:?}"
    );

    // HTTP/2 multiplexing: three requests on one connection, three records.
    let inv = unique("inv-h2-");
    let cg = w.sandbox(&inv, None);
    let out = w.curl(
        &cg,
        &[
            "--http2",
            "-Z",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}\n",
            "https://api.openai.com/json/1000",
            "https://api.openai.com/json/2000",
            "https://api.openai.com/json/3000",
        ],
    );
    assert_eq!(out.lines().filter(|l| *l == "2").count(), 3, "{out}");
    let recs = w.transactions(&inv, 3);
    let mut sizes: Vec<i64> = recs.iter().map(|r| i(r, sc::RESP_BYTES)).collect();
    sizes.sort();
    assert_eq!(sizes, vec![1000, 2000, 3000]);
    assert!(recs
        .iter()
        .all(|r| r.get_str(sc::NETWORK_PROTOCOL_VERSION) == Some("2")));

    // Budget: 20 tokens a day for namespace `tests`. Requests go through
    // until the budget is used up, then a 429 in Anthropic's own format.
    let inv = unique("inv-budget-");
    let cg = w.sandbox(&inv, None);
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"one two three four five six seven eight nine ten eleven twelve"}]}"#;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let out = w.curl(
            &cg,
            &[
                "-w",
                "\n%{http_code}",
                "-H",
                "content-type: application/json",
                "-H",
                "x-api-key: k",
                "-H",
                "anthropic-version: 2023-06-01",
                "-d",
                body,
                "https://api.anthropic.com/v1/messages",
            ],
        );
        let code = out.rsplit('\n').next().unwrap().to_owned();
        if code == "429" {
            assert!(out.contains("rate_limit_error"), "{out}");
        }
        statuses.push(code);
    }
    assert_eq!(statuses[0], "200");
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("429"),
        "{statuses:?}"
    );
    let recs = w.transactions(&inv, 4);
    let denied: Vec<&Record> = recs
        .iter()
        .filter(|r| r.get_bool(sc::BUDGET_DENIED) == Some(true))
        .collect();
    assert!(!denied.is_empty());
    assert!(denied
        .iter()
        .all(|r| i(r, sc::HTTP_RESPONSE_STATUS_CODE) == 429));
    assert!(recs
        .iter()
        .all(|r| r.get_i64(sc::BUDGET_DAILY_MAX) == Some(20)));
}

/// The OTLP receiver from bpf-tests/clients (PyPI opentelemetry-proto).
struct Receiver {
    child: Child,
    out: PathBuf,
    port: u16,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::start_with(&[])
    }

    /// With more receiver arguments (`--grpc`).
    fn start_with(args: &[&str]) -> Receiver {
        let out = std::env::temp_dir().join(format!("{}.jsonl", unique("egret-otlp-")));
        let mut child = Command::new(venv_python().expect("venv"))
            .arg(clients_dir().join("otlp_receiver.py"))
            .args(args)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("otlp receiver");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("receiver said {line:?}"));
        Receiver { child, out, port }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let l = self.lines();
            if pred(&l) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {l:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

#[test]
fn otlp_traces_logs_and_metrics_reach_an_independent_receiver() {
    if !require_privileges("otlp_e2e") || !require_venv("otlp_e2e") {
        return;
    }
    let rx = Receiver::start();
    let w = World::start(&format!(
        "gateways:\n- name: otlp-gw\n  routes:\n  - {{name: anthropic, hosts: [api.anthropic.com], provider: anthropic}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    metricsInterval: 1s\n",
        rx.port
    ));
    let inv = unique("inv-otlp-");
    let cg = w.sandbox(
        &inv,
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"tell me about herons"}]}"#;
    w.curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/json",
            "-H",
            "x-api-key: sk-ant-secret",
            "-H",
            "anthropic-version: 2023-06-01",
            "-d",
            body,
            "https://api.anthropic.com/v1/messages",
        ],
    );
    let rec = &w.transactions(&inv, 1)[0];
    let inv_v = Value::String(inv.clone());
    let lines = rx.wait("span, log and token metric", |l| {
        l.iter()
            .any(|x| x["signal"] == "traces" && x["attributes"]["invocation.id"] == inv_v)
            && l.iter().any(|x| {
                x["signal"] == "logs"
                    && x["attributes"]["invocation.id"] == inv_v
                    && x["attributes"]["egret.record.kind"] == "transaction"
            })
            && l.iter().any(|x| {
                x["signal"] == "metrics" && x.to_string().contains("gen_ai.client.token.usage")
            })
    });
    let span = lines
        .iter()
        .find(|x| x["signal"] == "traces" && x["attributes"]["invocation.id"] == inv_v)
        .unwrap();
    assert_eq!(span["name"], "chat claude-sonnet-4-5", "{span}");
    assert_eq!(span["kind"], 3, "CLIENT");
    assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        span["parent_span_id"].as_str(),
        Some(egret::attribution::invocation_span_id(&inv).as_str())
    );
    assert_eq!(span["span_id"].as_str(), rec.get_str(sc::SPAN_ID));
    assert_eq!(span["attributes"]["gen_ai.provider.name"], "anthropic");
    assert_eq!(
        span["attributes"]["gen_ai.usage.output_tokens"],
        i(rec, sc::GEN_AI_USAGE_OUTPUT_TOKENS)
    );
    let log = lines
        .iter()
        .find(|x| {
            x["signal"] == "logs"
                && x["attributes"]["invocation.id"] == inv_v
                && x["attributes"]["egret.record.kind"] == "transaction"
        })
        .unwrap();
    assert_eq!(log["severity_number"], 9, "2xx is INFO: {log}");
    assert!(
        log.to_string().contains("msg_"),
        "log carries the response body: {log}"
    );
    let all = serde_json::to_string(&lines).unwrap();
    assert!(!all.contains("sk-ant-secret"), "credential exported");
}

/// Fan-out through the running agent: one gateway with the operator's
/// exporter (`content: full`) and a tenant's (`exporters[]`, gRPC,
/// `content: none`), each an independent receiver. One real call reaches
/// both as a span and a log record; only the operator's carries the
/// prompt and the response body.
#[test]
fn otlp_fan_out_to_two_receivers_with_different_content_modes() {
    if !require_privileges("otlp_fan_out") || !require_venv("otlp_fan_out") {
        return;
    }
    let operator = Receiver::start();
    let tenant = Receiver::start_with(&["--grpc"]);
    let w = World::start(&format!(
        "gateways:\n- name: fan-gw\n  routes:\n  - {{name: anthropic, hosts: [api.anthropic.com], provider: anthropic}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    signals: {{metrics: false}}\n  exporters:\n  - name: tenant\n    endpoint: http://127.0.0.1:{}\n    protocol: grpc\n    content: none\n    serviceName: tenant-agents\n    signals: {{metrics: false}}\n",
        operator.port, tenant.port
    ));
    let inv = unique("inv-fan-");
    let cg = w.sandbox(&inv, None);
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"tell me about egrets"}]}"#;
    w.curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/json",
            "-H",
            "x-api-key: sk-ant-secret",
            "-H",
            "anthropic-version: 2023-06-01",
            "-d",
            body,
            "https://api.anthropic.com/v1/messages",
        ],
    );
    let rec = &w.transactions(&inv, 1)[0];
    let inv_v = Value::String(inv.clone());
    let both = |l: &[Value]| {
        l.iter()
            .any(|x| x["signal"] == "traces" && x["attributes"]["invocation.id"] == inv_v)
            && l.iter().any(|x| {
                x["signal"] == "logs"
                    && x["attributes"]["invocation.id"] == inv_v
                    && x["attributes"]["egret.record.kind"] == "transaction"
            })
    };
    let op = operator.wait("operator span and log", both);
    let te = tenant.wait("tenant span and log", both);
    let text = |l: &[Value]| serde_json::to_string(l).unwrap();
    let (op_text, te_text) = (text(&op), text(&te));
    assert!(
        op_text.contains("tell me about egrets"),
        "operator gets the prompt"
    );
    assert!(op_text.contains("msg_"), "operator gets the response body");
    for gone in ["tell me about egrets", "msg_", "/v1/messages"] {
        assert!(
            !te_text.contains(gone),
            "tenant received {gone:?}: {te_text}"
        );
    }
    let span = te
        .iter()
        .find(|x| x["signal"] == "traces" && x["attributes"]["invocation.id"] == inv_v)
        .unwrap();
    assert_eq!(span["name"], "chat claude-sonnet-4-5", "{span}");
    assert_eq!(
        span["attributes"]["gen_ai.usage.output_tokens"],
        i(rec, sc::GEN_AI_USAGE_OUTPUT_TOKENS)
    );
    assert!(
        te_text.contains("tenant-agents"),
        "tenant service.name: {te_text}"
    );
    for t in [&op_text, &te_text] {
        assert!(!t.contains("sk-ant-secret"), "credential exported");
    }
}

/// The agent configured by the standard variables alone (no `otlp` key):
/// OTLP/gRPC to grpcio's server, metrics every second. The measured bug:
/// with `OTEL_METRIC_EXPORT_INTERVAL=1000` no metric arrived within 12 s
/// (the 60 s default applied); now the token metric of a call arrives
/// within a few intervals of it.
#[test]
fn otlp_standard_variables_grpc_and_metric_interval() {
    if !require_privileges("otlp_env_grpc") || !require_venv("otlp_env_grpc") {
        return;
    }
    let rx = Receiver::start_with(&["--grpc"]);
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("127.0.0.1:{}", rx.port),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_EXPORTER_OTLP_INSECURE", "true".to_owned()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=t%2042".to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_owned()),
        ("OTEL_SERVICE_NAME", "egret-e2e".to_owned()),
        ("OTEL_LOGS_EXPORTER", "none".to_owned()),
    ];
    let w = World::with(WorldOptions {
        extra_yaml: "gateways:\n- name: env-gw\n  routes:\n  - {name: openai, hosts: [api.openai.com], provider: openai}\n".into(),
        agent: AgentOptions {
            env: env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            ..AgentOptions::default()
        },
        ..WorldOptions::default()
    });
    let inv = unique("inv-otlp-env-");
    let cg = w.sandbox(&inv, None);
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"herons?"}]}"#;
    w.curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/json",
            "-H",
            "authorization: Bearer sk-secret",
            "-d",
            body,
            "https://api.openai.com/v1/chat/completions",
        ],
    );
    let called = Instant::now();
    w.transactions(&inv, 1);
    let inv_v = Value::String(inv.clone());
    let lines = rx.wait("span and token metric over gRPC", |l| {
        l.iter()
            .any(|x| x["signal"] == "traces" && x["attributes"]["invocation.id"] == inv_v)
            && l.iter()
                .any(|x| x["signal"] == "metrics" && x["name"] == "gen_ai.client.token.usage")
    });
    let waited = called.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the token metric took {waited:?}: the 1 s interval is not applied"
    );
    let span = lines
        .iter()
        .find(|x| x["signal"] == "traces" && x["attributes"]["invocation.id"] == inv_v)
        .unwrap();
    assert_eq!(span["resource"]["service.name"], "egret-e2e", "{span}");
    assert_eq!(span["attributes"]["gen_ai.provider.name"], "openai");
    let reqs: Vec<&Value> = lines.iter().filter(|x| x["signal"] == "request").collect();
    assert!(reqs
        .iter()
        .all(|r| r["content_type"] == "application/grpc" && r["headers"]["x-tenant"] == "t 42"));
    assert!(
        !lines.iter().any(|x| x["signal"] == "logs"),
        "OTEL_LOGS_EXPORTER=none"
    );
    // /status: the exporter over gRPC, logs switched off.
    let st = w.agent.status();
    let e = &st["otlp"][0];
    assert_eq!(e["name"], "env-gw", "{st}");
    assert_eq!(e["switched_off"], serde_json::json!(["logs"]), "{e}");
    assert!(e["signals"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["protocol"] == "grpc"));
    assert!(!serde_json::to_string(&lines).unwrap().contains("sk-secret"));
}

#[test]
fn hot_reload_applies_to_the_next_request_and_keeps_connections_and_rejects_bad_files() {
    if !require_privileges("hot_reload") {
        return;
    }
    let allow = "gateways:\n- name: gw\n  routes:\n  - {name: openai, hosts: [api.openai.com], provider: openai}\n";
    let w = World::start(allow);
    let base = std::fs::read_to_string(&w.agent.config).unwrap();
    let inv = unique("inv-reload-");
    let cg = w.sandbox(&inv, None);
    let mut cmd = sandboxed(&cg, None, "unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
    ])
    .arg(&w.hosts)
    .arg("python3")
    .arg(clients_dir().join("keepalive_client.py"))
    .arg("api.openai.com")
    .env("SSL_CERT_FILE", &w.bundle);
    let mut client = HeldClient::spawn(cmd);
    client.say("GET /json/10");
    let first = client.next_report();
    assert_eq!(first["status"], 200, "{first}");

    // Same file without the route: openai is now denied.
    let generation = |w: &World| w.agent.status()["config"]["generation"].as_u64().unwrap();
    assert_eq!(generation(&w), 1);
    std::fs::write(
        &w.agent.config,
        base.replace(allow, "gateways:\n- name: gw\n"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while generation(&w) < 2 {
        assert!(
            Instant::now() < deadline,
            "reload not applied:\n{}",
            w.agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    client.say("GET /json/10");
    let second = client.next_report();
    assert_eq!(second["status"], 403, "{second}");
    assert_eq!(
        second["local_port"], first["local_port"],
        "the connection was kept"
    );

    // A broken file is rejected; the config in force stays.
    std::fs::write(&w.agent.config, format!("{base}\nnode:\n  bogusKey: 1\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = w.agent.status();
        if st["config"]["reloads_rejected"].as_u64() >= Some(1) {
            let err = st["config"]["last_reload_error"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            assert!(err.contains("line"), "error names the line: {err}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bad reload not reported:\n{}",
            w.agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    client.say("GET /json/10");
    let third = client.next_report();
    assert_eq!(third["status"], 403, "old config still in force: {third}");
    assert_eq!(generation(&w), 2);
    client.finish();
    // `egret records` reads the same file: make it valid again.
    std::fs::write(
        &w.agent.config,
        base.replace(allow, "gateways:\n- name: gw\n"),
    )
    .unwrap();
    let recs = w.transactions(&inv, 3);
    assert_eq!(
        recs.iter()
            .filter(|r| r.get_bool(sc::POLICY_DENIED) == Some(true))
            .count(),
        2
    );
}

#[test]
fn large_sse_stream_is_relayed_whole_with_bounded_capture_and_untrusting_clients_fail_cleanly() {
    if !require_privileges("large_sse") {
        return;
    }
    let w = World::start("");
    let inv = unique("inv-sse5m-");
    let cg = w.sandbox(&inv, None);
    // ~5.4 MB of events: every byte reaches the client, the record keeps
    // 64 KiB of it and says so, and counts the whole stream.
    let out = w.curl(
        &cg,
        &[
            "-N",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "https://api.openai.com/sse/100000",
        ],
    );
    let got: i64 = out.trim().parse().unwrap();
    assert!(got > 5_000_000, "{got}");
    let rec = &w.transactions(&inv, 1)[0];
    assert_eq!(i(rec, sc::RESP_BYTES), got);
    assert_eq!(rec.get_bool(sc::RESP_TRUNCATED), Some(true));
    assert_eq!(
        rec.get_str(sc::RESPONSE_BODY).map(str::len),
        Some(64 * 1024)
    );
    assert!(rec.get(sc::ERROR_TYPE).is_none(), "{}", rec.to_json_line());

    // A client that does not trust the node CA fails the handshake quickly
    // and cleanly; the proxy keeps serving.
    let t0 = Instant::now();
    let out = sandboxed(&cg, None, "unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(&w.hosts)
        .args([
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            "/etc/ssl/certs/ca-certificates.crt",
            "https://api.openai.com/json/10",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(60),
        "certificate rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    let ok = w.curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://api.openai.com/json/10",
        ],
    );
    assert_eq!(ok, "200");
}

/// The value of the one series of `family` (a sample name as exposed, e.g.
/// `egret_requests_total`) whose labels include every pair of `labels`.
fn prom_value(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(family)?;
        let (set, value) = rest.rsplit_once(' ')?;
        let set = set.strip_prefix('{').unwrap_or(set);
        labels
            .iter()
            .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// Request metrics and the streaming metrics of real transactions, on the
/// admin `/metrics` endpoint and over OTLP, with a series cap of 3: the
/// streamed call, the refused one and the first of four more models keep
/// their label sets; the other three land in the overflow series, counted,
/// on both sides.
#[test]
fn request_and_streaming_metrics_reach_prometheus_and_otlp_under_a_series_cap() {
    if !require_privileges("request_metrics") || !require_venv("request_metrics") {
        return;
    }
    let rx = Receiver::start();
    let w = World::with(WorldOptions {
        extra_yaml: format!(
            "gateways:\n- name: metrics-gw\n  defaultPolicy: deny-all\n  routes:\n  - {{name: anthropic, hosts: [api.anthropic.com], provider: anthropic}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    metricsInterval: 1s\n    signals: {{traces: false, logs: false, metrics: true}}\n",
            rx.port
        ),
        agent: AgentOptions {
            node_yaml: "metrics:\n  maxSeries: 3\n".into(),
            ..AgentOptions::default()
        },
        ..WorldOptions::default()
    });
    let inv = unique("inv-metrics-");
    let cg = w.sandbox(&inv, None);
    let call = |model: &str, stream: bool| {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":8,"stream":{stream},"messages":[{{"role":"user","content":"tell me about herons"}}]}}"#
        );
        w.curl(
            &cg,
            &[
                "-o",
                "/dev/null",
                "-H",
                "content-type: application/json",
                "-H",
                "x-api-key: sk-ant-test",
                "-H",
                "anthropic-version: 2023-06-01",
                "-H",
                "x-mock-delay-ms: 30",
                "-d",
                &body,
                "https://api.anthropic.com/v1/messages",
            ],
        );
    };
    // A streamed call (30 ms between chunks) and one the policy refuses.
    call("claude-sonnet-4-5", true);
    w.curl(&cg, &["-o", "/dev/null", "https://denied.example/"]);
    let recs = w.transactions(&inv, 2);
    let streamed = recs
        .iter()
        .find(|r| r.get_bool(sc::GEN_AI_REQUEST_STREAM) == Some(true))
        .expect("the streamed transaction");
    let ttfc = match streamed.get(sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK) {
        Some(egret::record::AttrValue::Float(f)) => *f,
        other => panic!("time to first chunk: {other:?}"),
    };
    // Four more models: past the cap of 3 label sets.
    for m in ["m-1", "m-2", "m-3", "m-4"] {
        call(m, false);
    }
    w.transactions(&inv, 6);

    let ok = [
        ("egret_gateway_name", "metrics-gw"),
        ("egret_route_name", "anthropic"),
        ("gen_ai_provider_name", "anthropic"),
        ("gen_ai_request_model", "claude-sonnet-4-5"),
        ("http_response_status_code", "200"),
        ("egret_policy_denied", "false"),
        ("agent_namespace", "tests"),
    ];
    let denied = [
        ("egret_gateway_name", "metrics-gw"),
        ("http_response_status_code", "403"),
        ("error_type", "policy_denied"),
        ("egret_policy_denied", "true"),
        ("agent_namespace", "tests"),
    ];
    let overflow = [("otel_metric_overflow", "true")];
    let deadline = Instant::now() + patience(Duration::from_secs(30));
    let text = loop {
        let text = w.agent.metrics();
        if prom_value(&text, "egret_requests_total{", &overflow) == Some(3.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no overflow of 3 on /metrics:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        prom_value(&text, "egret_requests_total{", &ok),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        prom_value(&text, "egret_requests_total{", &denied),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        prom_value(&text, "egret_request_duration_seconds_count{", &denied),
        Some(1.0)
    );
    assert_eq!(
        prom_value(
            &text,
            "egret_metric_series{",
            &[("instrument", "egret.requests")]
        ),
        Some(3.0),
        "the cap of 3 series"
    );
    assert_eq!(
        prom_value(
            &text,
            "egret_requests_total{",
            &[("gen_ai_request_model", "m-1")]
        ),
        Some(1.0),
        "the third label set is kept"
    );
    let model = [("gen_ai_request_model", "claude-sonnet-4-5")];
    assert_eq!(
        prom_value(
            &text,
            "gen_ai_client_inference_time_to_first_chunk_seconds_count{",
            &model
        ),
        Some(1.0),
        "{text}"
    );
    let ttfc_sum = prom_value(
        &text,
        "gen_ai_client_inference_time_to_first_chunk_seconds_sum{",
        &model,
    )
    .unwrap();
    assert!((ttfc_sum - ttfc).abs() < 1e-6, "{ttfc_sum} vs {ttfc}");
    // One gap per chunk after the first, each about the mock's 30 ms.
    let gaps = prom_value(
        &text,
        "gen_ai_client_inference_time_per_output_chunk_seconds_count{",
        &model,
    )
    .expect("time per output chunk");
    let gap_sum = prom_value(
        &text,
        "gen_ai_client_inference_time_per_output_chunk_seconds_sum{",
        &model,
    )
    .unwrap();
    assert!(gaps >= 3.0, "{gaps} gaps:\n{text}");
    let mean = gap_sum / gaps;
    assert!((0.02..0.5).contains(&mean), "mean gap {mean} s");
    assert!(
        prom_value(
            &text,
            "gen_ai_client_inference_time_per_output_chunk_seconds_count{",
            &[("gen_ai_request_model", "m-1")]
        )
        .is_none(),
        "an unstreamed call has no chunk metrics"
    );

    // OTLP: the same series from the exporter (its own cap of 3).
    let attr_is = |p: &Value, k: &str, v: Value| p["attributes"][k] == v;
    let lines = rx.wait("request and streaming metrics", |l| {
        let named = |p: &&Value, name: &str| p["name"] == name;
        l.iter()
            .filter(|p| named(p, sc::METRIC_REQUESTS))
            .any(|p| attr_is(p, "otel.metric.overflow", Value::Bool(true)) && p["value"] == 3)
            && l.iter()
                .filter(|p| named(p, sc::METRIC_GEN_AI_TIME_PER_OUTPUT_CHUNK))
                .any(|p| p["count"].as_u64() >= Some(3))
    });
    // Points come in no particular order (series are keyed by a seeded
    // hash): the streamed call's 200 series, by its model.
    let ok_point = lines
        .iter()
        .filter(|x| x["name"] == sc::METRIC_REQUESTS)
        .find(|p| {
            attr_is(p, sc::HTTP_RESPONSE_STATUS_CODE, Value::from(200))
                && attr_is(
                    p,
                    sc::GEN_AI_REQUEST_MODEL,
                    Value::from("claude-sonnet-4-5"),
                )
        })
        .expect("the 200 series over OTLP");
    for (k, v) in [
        (sc::GATEWAY_NAME, Value::from("metrics-gw")),
        (sc::ROUTE_NAME, Value::from("anthropic")),
        (sc::GEN_AI_PROVIDER_NAME, Value::from("anthropic")),
        (sc::GEN_AI_REQUEST_MODEL, Value::from("claude-sonnet-4-5")),
        (sc::POLICY_DENIED, Value::Bool(false)),
        (sc::AGENT_NAMESPACE, Value::from("tests")),
    ] {
        assert!(attr_is(ok_point, k, v.clone()), "{k}={v} not in {ok_point}");
    }
    let ttfc_point = lines
        .iter()
        .find(|x| x["name"] == sc::METRIC_GEN_AI_TIME_TO_FIRST_CHUNK)
        .expect("time to first chunk over OTLP");
    assert_eq!(ttfc_point["unit"], "s");
    assert_eq!(ttfc_point["count"], 1);
    assert_eq!(
        ttfc_point["explicit_bounds"].as_array().map(Vec::len),
        Some(14)
    );
}

/// The receiver's lines once it holds `n` spans of invocation `inv`.
fn wait_spans(rx: &Receiver, inv: &str, n: usize) -> Vec<Value> {
    rx.wait("a span per call", |l| {
        l.iter()
            .filter(|x| x["signal"] == "traces" && x["attributes"]["invocation.id"] == inv)
            .count()
            >= n
    })
}

/// The span a record was exported as.
fn span_of<'a>(lines: &'a [Value], rec: &Record) -> &'a Value {
    lines
        .iter()
        .find(|x| x["signal"] == "traces" && x["span_id"].as_str() == rec.get_str(sc::SPAN_ID))
        .unwrap_or_else(|| panic!("no span for {}", rec.to_json_line()))
}

/// A span attribute holding JSON text, parsed.
fn json_attr(span: &Value, key: &str) -> Value {
    let s = span["attributes"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing: {span}"));
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{key}: {e}: {s}"))
}

/// Bedrock's structured content: boto3's Converse and ConverseStream (the
/// stream an AWS binary event stream, held base64 in the record) and
/// InvokeModel / InvokeModelWithResponseStream (Anthropic bodies, streamed
/// as base64 `chunk` events), and the Anthropic SDK's `AnthropicBedrock`,
/// through egret to the stand-in: each call's `gen_ai.output.messages` text
/// and finish reason are what the SDK parsed from the same bytes.
#[test]
fn bedrock_structured_content_matches_what_boto3_and_anthropic_bedrock_parsed() {
    if !require_privileges("bedrock_content") || !require_venv("bedrock_content") {
        return;
    }
    let rx = Receiver::start();
    let w = World::start(&format!(
        "gateways:\n- name: content\n  routes:\n  - {{name: bedrock, hosts: [bedrock-runtime.us-east-1.amazonaws.com], provider: bedrock}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    messages: true\n    signals: {{logs: false, metrics: false}}\n",
        rx.port
    ));
    let inv = unique("inv-bedrock-content-");
    let cg = w.sandbox(&inv, None);
    let calls = w.sdk(&cg, "bedrock_client.py");
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:?}");
    let recs = w.transactions(&inv, calls.len());
    let lines = wait_spans(&rx, &inv, recs.len());
    let by = |suffix: &str, model: &str| -> &Record {
        recs.iter()
            .find(|r| {
                r.get_str(sc::URL_PATH).is_some_and(|p| p.ends_with(suffix))
                    && r.get_str(sc::GEN_AI_REQUEST_MODEL) == Some(model)
                    && r.get_i64(sc::HTTP_RESPONSE_STATUS_CODE) == Some(200)
            })
            .unwrap_or_else(|| panic!("no {suffix} {model}"))
    };
    let mut checked = 0;
    for (call, suffix) in [
        ("converse", "/converse"),
        ("converse_stream", "/converse-stream"),
        ("invoke_model", "/invoke"),
        (
            "invoke_model_with_response_stream",
            "/invoke-with-response-stream",
        ),
        ("anthropic_bedrock_messages", "/invoke"),
        (
            "anthropic_bedrock_messages_stream",
            "/invoke-with-response-stream",
        ),
    ] {
        let sdk = calls.iter().find(|c| c["call"] == call).unwrap();
        let rec = by(suffix, sdk["model"].as_str().unwrap());
        let span = span_of(&lines, rec);
        let out = json_attr(span, "gen_ai.output.messages");
        let text: String = out[0]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] == "text")
            .map(|p| p["content"].as_str().unwrap())
            .collect();
        assert!(!text.is_empty(), "{call}: {out}");
        assert_eq!(text, sdk["text"].as_str().unwrap(), "{call}: {out}");
        assert_eq!(out[0]["finish_reason"], sdk["stop_reason"], "{call}: {out}");
        assert_eq!(
            span["attributes"]["egret.messages.complete"], true,
            "{call}"
        );
        let input = json_attr(span, "gen_ai.input.messages");
        assert!(
            input.to_string().contains("wade"),
            "{call}: the prompt is not in the input: {input}"
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
}

/// Structured content through the official SDKs: the OpenAI (Chat
/// Completions and Responses, JSON and streamed), Anthropic and Gemini
/// clients call the stand-ins through egret; an exporter with `messages:
/// true` and the OpenInference and MLflow profiles sends each call's
/// conversation. The assembled output text is exactly what each SDK
/// assembled from the same bytes, streams included; the finish reason is
/// the provider's; the prompt and system instructions are the request's.
#[test]
fn structured_content_from_official_sdks_matches_what_each_sdk_assembled() {
    if !require_privileges("structured_content") || !require_venv("structured_content") {
        return;
    }
    let rx = Receiver::start();
    let w = World::start(&format!(
        "gateways:\n- name: content\n  routes:\n  - {{name: anthropic, hosts: [api.anthropic.com], provider: anthropic}}\n  - {{name: openai, hosts: [api.openai.com], provider: openai}}\n  - {{name: google, hosts: [generativelanguage.googleapis.com], provider: google}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    messages: true\n    conventions: [openinference, mlflow]\n    signals: {{logs: false, metrics: false}}\n",
        rx.port
    ));
    let inv = unique("inv-content-");
    let sb_id = unique("sb");
    let cg = w.agent.cgroup(&sb_id);
    w.agent.register_with(&sb_id, None, &inv, None);
    let mut calls = Vec::new();
    for client in [
        "openai_client.py",
        "anthropic_client.py",
        "google_client.py",
    ] {
        let c = w.sdk(&cg, client);
        assert!(c.iter().all(|c| c["ok"] == true), "{c:?}");
        calls.extend(c);
    }
    let recs = w.transactions(&inv, calls.len());
    let inv_v = Value::String(inv.clone());
    let lines = wait_spans(&rx, &inv, recs.len());
    let span_of = |rec: &Record| span_of(&lines, rec);
    let text_of = |msgs: &Value| -> String {
        msgs[0]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] == "text")
            .map(|p| p["content"].as_str().unwrap())
            .collect()
    };
    const PROMPT: &str = "Name three birds that wade in shallow water";
    /// (call, path, streamed, the SDK's finish reason field, system text)
    type Case<'a> = (&'a str, &'a str, bool, Option<&'a str>, Option<&'a str>);
    let cases: &[Case] = &[
        (
            "chat",
            "/v1/chat/completions",
            false,
            Some("finish_reason"),
            None,
        ),
        ("responses", "/v1/responses", false, None, Some("Be brief.")),
        (
            "responses_stream",
            "/v1/responses",
            true,
            None,
            Some("Be brief."),
        ),
        (
            "messages",
            "/v1/messages",
            false,
            Some("stop_reason"),
            Some("You are a concise assistant for bird watchers."),
        ),
        (
            "messages_stream",
            "/v1/messages",
            true,
            Some("stop_reason"),
            None,
        ),
        (
            "generate_content",
            ":generateContent",
            false,
            None,
            Some("You are a concise assistant."),
        ),
        (
            "generate_content_stream",
            ":streamGenerateContent",
            true,
            None,
            None,
        ),
    ];
    for &(call, path, streamed, finish_field, system) in cases {
        let sdk = calls.iter().find(|c| c["call"] == call).unwrap();
        let rec = by_path(&recs, path, streamed);
        let span = span_of(rec);
        let out = json_attr(span, "gen_ai.output.messages");
        assert_eq!(
            text_of(&out),
            sdk["text"].as_str().unwrap(),
            "{call}: assembled text differs from the SDK's: {out}"
        );
        assert_eq!(out[0]["role"], "assistant", "{call}");
        if let Some(f) = finish_field {
            assert_eq!(out[0]["finish_reason"], sdk[f], "{call}");
        }
        let input = json_attr(span, "gen_ai.input.messages");
        assert!(
            input.to_string().contains(PROMPT),
            "{call}: the prompt is not in the input: {input}"
        );
        if let Some(sys) = system {
            let s = json_attr(span, "gen_ai.system_instructions");
            assert_eq!(s[0]["content"], sys, "{call}: {s}");
        }
        assert_eq!(
            span["attributes"]["egret.messages.complete"], true,
            "{call}"
        );
        // OpenInference and MLflow read the same assembly.
        assert_eq!(
            span["attributes"]["llm.output_messages.0.message.content"], sdk["text"],
            "{call}"
        );
        if streamed {
            let mlflow = json_attr(span, "mlflow.spanOutputs");
            assert_eq!(mlflow, out, "{call}: MLflow gets the assembled output");
        }
    }
    // The OpenAI chat streams (with and without the usage chunk egret
    // asks for): one per stream, both assembled to the SDK's text.
    let streams: Vec<&Record> = recs
        .iter()
        .filter(|r| {
            r.get_str(sc::URL_PATH) == Some("/v1/chat/completions")
                && r.get_bool(sc::GEN_AI_REQUEST_STREAM) == Some(true)
        })
        .collect();
    assert_eq!(streams.len(), 2);
    let sdk_streams: Vec<&Value> = calls
        .iter()
        .filter(|c| c["call"] == "chat_stream" || c["call"] == "chat_stream_usage")
        .collect();
    for rec in streams {
        let out = json_attr(span_of(rec), "gen_ai.output.messages");
        assert!(
            sdk_streams
                .iter()
                .any(|sdk| text_of(&out) == sdk["text"].as_str().unwrap()
                    && out[0]["finish_reason"] == sdk["finish_reason"]),
            "{out} is none of the SDK's streams: {sdk_streams:?}"
        );
    }
    // Embeddings have no messages.
    let emb = by_path(&recs, "/v1/embeddings", false);
    assert!(span_of(emb)["attributes"]
        .get("gen_ai.output.messages")
        .is_none());

    // The invocation's root span: its first request as input, its last
    // response (the Gemini stream, the last call) assembled as output.
    w.agent.unregister(&sb_id);
    let lines = rx.wait("the invoke_agent span", |l| {
        l.iter().any(|x| {
            x["signal"] == "traces"
                && x["attributes"]["invocation.id"] == inv_v
                && x["attributes"]["gen_ai.operation.name"] == "invoke_agent"
        })
    });
    let root = lines
        .iter()
        .find(|x| {
            x["signal"] == "traces"
                && x["attributes"]["invocation.id"] == inv_v
                && x["attributes"]["gen_ai.operation.name"] == "invoke_agent"
        })
        .unwrap();
    let first = recs
        .iter()
        .min_by_key(|r| r.get_i64(sc::START_TIME))
        .unwrap();
    let last = recs.iter().max_by_key(|r| r.get_i64(sc::END_TIME)).unwrap();
    assert_eq!(
        json_attr(root, "mlflow.spanInputs"),
        serde_json::from_str::<Value>(first.get_str(sc::REQUEST_BODY).unwrap()).unwrap(),
        "the first request: {root}"
    );
    assert_eq!(
        json_attr(root, "mlflow.spanOutputs"),
        json_attr(span_of(last), "gen_ai.output.messages"),
        "the last response, assembled: {root}"
    );
    assert_eq!(root["attributes"]["openinference.span.kind"], "AGENT");
}

/// Tool calls through the official SDKs: the stand-ins answer a request
/// that offers tools with a tool call (streamed: id and name first, the
/// arguments in fragments), the SDKs send the tool's result back. The
/// exported structured content has each call as a `tool_call` part equal
/// to what the SDK assembled (streamed fragments joined), the result as a
/// `tool_call_response` with the call's id, and the offered tools as
/// definitions.
#[test]
fn tool_calls_from_official_sdks_are_parts_equal_to_what_each_sdk_assembled() {
    if !require_privileges("tool_calls") || !require_venv("tool_calls") {
        return;
    }
    let rx = Receiver::start();
    let w = World::start(&format!(
        "gateways:\n- name: tools\n  routes:\n  - {{name: anthropic, hosts: [api.anthropic.com], provider: anthropic}}\n  - {{name: openai, hosts: [api.openai.com], provider: openai}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    messages: true\n    conventions: [openinference]\n    signals: {{logs: false, metrics: false}}\n",
        rx.port
    ));
    let inv = unique("inv-tools-");
    let cg = w.sandbox(&inv, None);
    let calls = w.sdk(&cg, "tools_client.py");
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:?}");
    assert_eq!(calls.len(), 5);
    let mut recs = w.transactions(&inv, calls.len());
    recs.sort_by_key(|r| r.get_i64(sc::START_TIME));
    let lines = wait_spans(&rx, &inv, recs.len());
    let tool_part = |out: &Value| -> Value {
        out[0]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == "tool_call")
            .unwrap_or_else(|| panic!("no tool_call part: {out}"))
            .clone()
    };
    for (n, sdk) in calls.iter().enumerate() {
        let call = sdk["call"].as_str().unwrap();
        let span = span_of(&lines, &recs[n]);
        let a = &span["attributes"];
        let out = json_attr(span, "gen_ai.output.messages");
        let input = json_attr(span, "gen_ai.input.messages");
        let tools = json_attr(span, "gen_ai.tool.definitions");
        assert_eq!(tools[0]["name"], "search_birds", "{call}: {tools}");
        assert_eq!(
            tools[0]["description"], "Search the bird database",
            "{call}"
        );
        assert_eq!(tools[0]["parameters"]["required"][0], "query", "{call}");
        if let Some(tool) = sdk.get("tool") {
            let part = tool_part(&out);
            assert_eq!(part["id"], tool["id"], "{call}: {out}");
            assert_eq!(part["name"], tool["name"], "{call}: {out}");
            assert_eq!(part["arguments"], tool["arguments"], "{call}: {out}");
            let finish = sdk.get("finish_reason").or(sdk.get("stop_reason")).unwrap();
            assert_eq!(&out[0]["finish_reason"], finish, "{call}");
            assert_eq!(
                a["llm.output_messages.0.message.tool_calls.0.tool_call.function.name"],
                "search_birds",
                "{call}"
            );
        } else {
            // The second turn: the call and its result in the input, a
            // text answer out.
            let id = &sdk["tool_call_id"];
            let parts: Vec<&Value> = input
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|m| m["parts"].as_array().unwrap())
                .collect();
            assert!(
                parts
                    .iter()
                    .any(|p| p["type"] == "tool_call" && &p["id"] == id),
                "{call}: {input}"
            );
            assert!(
                parts.iter().any(|p| p["type"] == "tool_call_response"
                    && &p["id"] == id
                    && p["response"] == "heron, egret, stilt"),
                "{call}: {input}"
            );
            let text: String = out[0]["parts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["content"].as_str())
                .collect();
            assert_eq!(text, sdk["text"].as_str().unwrap(), "{call}");
        }
    }
}

/// The body of a `curl -D -` answer, and its header `name`.
fn split_answer(out: &str, name: &str) -> (String, Option<String>) {
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or(("", out));
    let value = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    });
    (body.to_owned(), value)
}

/// The JSON-RPC messages of an MCP answer: a JSON value (an array gives
/// its elements) or an SSE stream's `data:` lines.
fn rpc_messages(body: &str) -> Vec<Value> {
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Array(v)) => v,
        Ok(v) => vec![v],
        Err(_) => body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect(),
    }
}

fn strs(r: &Record, k: &str) -> Vec<String> {
    match r.get(k) {
        Some(egret::record::AttrValue::StrArray(v)) => v.clone(),
        other => panic!("{k}: {other:?} in {}", r.to_json_line()),
    }
}

/// MCP through the agent to the stand-in: a JSON-RPC batch (answered as a
/// JSON array and as an SSE stream) is recorded per message and reaches a
/// real OTLP receiver as one child span per message under the exchange's
/// span; egret's traceparent goes into each request's `params._meta` (the
/// stand-in reports what it received: the header's value), and a
/// sandbox-supplied `_meta.traceparent` is kept and becomes the parent.
#[test]
fn mcp_batches_become_spans_and_trace_context_goes_into_params_meta() {
    if !require_privileges("mcp_batch") || !require_venv("mcp_batch") {
        return;
    }
    let rx = Receiver::start();
    let w = World::start(&format!(
        "gateways:\n- name: mcp-gw\n  routes:\n  - {{name: tools, hosts: [mcp.local], provider: mcp}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    signals: {{metrics: false}}\n",
        rx.port
    ));
    let inv = unique("inv-mcp-batch-");
    let registered = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cg = w.sandbox(&inv, Some(registered));
    let post = |body: &str, sid: Option<&str>, path: &str| -> String {
        let sid_h = sid.map(|s| format!("mcp-session-id: {s}"));
        let mut args = vec![
            "-D",
            "-",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-H",
            "mcp-protocol-version: 2025-06-18",
        ];
        if let Some(h) = &sid_h {
            args.extend(["-H", h.as_str()]);
        }
        let url = format!("https://mcp.local{path}");
        args.extend(["-d", body, url.as_str()]);
        w.curl(&cg, &args)
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
    let (_, sid) = split_answer(&post(init, None, "/mcp?format=json"), "mcp-session-id");
    let sid = sid.expect("a session id");

    let batch = |base: i64| {
        format!(
            r#"[{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hi"}}}}}},
               {{"jsonrpc":"2.0","method":"notifications/initialized"}},
               {{"jsonrpc":"2.0","id":{},"method":"nope"}},
               {{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"add","arguments":{{"a":1}},"_meta":{{"progressToken":"p"}}}}}}]"#,
            base,
            base + 1,
            base + 2
        )
    };
    let json_answer =
        rpc_messages(&split_answer(&post(&batch(10), Some(&sid), "/mcp?format=json"), "x").0);
    let sse_answer = rpc_messages(&split_answer(&post(&batch(20), Some(&sid), "/mcp"), "x").0);
    // A single request carrying its own trace context (no header).
    let own = "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01";
    let single = format!(
        r#"{{"jsonrpc":"2.0","id":30,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"x"}},"_meta":{{"traceparent":"{own}"}}}}}}"#
    );
    let single_answer =
        rpc_messages(&split_answer(&post(&single, Some(&sid), "/mcp?format=json"), "x").0);

    let recs = w.transactions(&inv, 4);
    let by_first_id = |id: &str| {
        recs.iter()
            .find(|r| r.get_str(sc::JSONRPC_REQUEST_ID) == Some(id))
            .unwrap_or_else(|| panic!("no transaction for id {id}"))
    };

    // What the stand-in received: each request's `_meta.traceparent` is
    // the header egret sent, whose span is the record's.
    for (answer, first, responses) in [(&json_answer, "10", 3), (&sse_answer, "20", 4)] {
        let rec = by_first_id(first);
        let line = rec.to_json_line();
        let results: Vec<&Value> = answer.iter().filter(|m| m.get("id").is_some()).collect();
        assert_eq!(answer.len(), responses, "{answer:?}");
        let seen: Vec<&Value> = results
            .iter()
            .filter_map(|m| m["result"]["_meta"].get("egret.mock/seen"))
            .collect();
        assert_eq!(seen.len(), 2, "both tools/call results report: {answer:?}");
        for s in seen {
            let header = s["traceparent"].as_str().expect("header");
            assert_eq!(s["meta"]["traceparent"].as_str(), Some(header), "{s}");
            let parts: Vec<&str> = header.split('-').collect();
            assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(Some(parts[2]), rec.get_str(sc::SPAN_ID), "{line}");
        }
        // The sandbox's other `_meta` keys are kept.
        assert!(results
            .iter()
            .any(|m| m["result"]["_meta"]["egret.mock/seen"]["meta"]["progressToken"] == "p"));
        assert_eq!(
            rec.get_str(sc::MCP_TRACE_CONTEXT),
            Some("injected"),
            "{line}"
        );
        assert_eq!(rec.get_i64(sc::MCP_BATCH_SIZE), Some(4), "{line}");
        assert_eq!(
            strs(rec, sc::MCP_BATCH_METHOD_NAMES),
            [
                "tools/call",
                "notifications/initialized",
                "nope",
                "tools/call"
            ]
        );
        assert_eq!(
            strs(rec, sc::MCP_BATCH_ERROR_TYPES),
            ["", "", "-32601", "tool_error"],
            "{line}"
        );
        assert_eq!(rec.get(sc::PARSE_ERROR), None, "{line}");
    }

    // The sandbox's own `_meta.traceparent`: kept, and the parent.
    let rec = by_first_id("30");
    let s = &single_answer[0]["result"]["_meta"]["egret.mock/seen"];
    assert_eq!(s["meta"]["traceparent"], own, "{single_answer:?}");
    assert_eq!(
        s["traceparent"].as_str(),
        Some(
            format!(
                "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-{}-01",
                rec.get_str(sc::SPAN_ID).unwrap()
            )
            .as_str()
        )
    );
    assert_eq!(
        rec.get_str(sc::TRACE_ID),
        Some("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    );
    assert_eq!(rec.get_str(sc::PARENT_SPAN_ID), Some("bbbbbbbbbbbbbbbb"));
    assert_eq!(rec.get_str(sc::MCP_TRACE_CONTEXT), Some("supplied"));
    assert_eq!(rec.get(sc::MCP_BATCH_SIZE), None);

    // The receiver: one child span per batch message under each batch's span.
    for first in ["10", "20"] {
        let rec = by_first_id(first);
        let parent = rec.get_str(sc::SPAN_ID).unwrap().to_owned();
        let kids_of = |l: &[Value]| -> Vec<Value> {
            let mut v: Vec<Value> = l
                .iter()
                .filter(|x| x["signal"] == "traces" && x["parent_span_id"] == parent.as_str())
                .cloned()
                .collect();
            v.sort_by_key(|x| x["attributes"]["egret.mcp.batch.index"].as_i64());
            v
        };
        let lines = rx.wait("the batch's spans", |l| {
            kids_of(l).len() >= 4
                && l.iter()
                    .any(|x| x["signal"] == "traces" && x["span_id"] == parent.as_str())
        });
        let kids = kids_of(&lines);
        assert_eq!(kids.len(), 4, "{kids:?}");
        let names: Vec<&str> = kids.iter().map(|k| k["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "tools/call echo",
                "notifications/initialized",
                "nope",
                "tools/call add"
            ]
        );
        let base: i64 = first.parse().unwrap();
        for (k, id) in [
            (0, Some(base)),
            (1, None),
            (2, Some(base + 1)),
            (3, Some(base + 2)),
        ] {
            let a = &kids[k]["attributes"];
            assert_eq!(
                a["jsonrpc.request.id"].as_str(),
                id.map(|i| i.to_string()).as_deref()
            );
            assert_eq!(kids[k]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(a["mcp.session.id"], sid.as_str());
            assert_eq!(a["invocation.id"], inv.as_str());
        }
        assert_eq!(
            kids[0]["attributes"]["gen_ai.operation.name"],
            "execute_tool"
        );
        assert_eq!(kids[0]["attributes"]["gen_ai.tool.name"], "echo");
        assert_eq!(kids[0]["status"]["code"], 0);
        assert_eq!(kids[2]["attributes"]["error.type"], "-32601");
        assert_eq!(kids[2]["status"]["code"], 2, "ERROR");
        assert_eq!(kids[3]["attributes"]["error.type"], "tool_error");
        assert_eq!(kids[3]["attributes"]["gen_ai.tool.name"], "add");
    }
}

// ---- redaction and content modes (docs/redaction.md) ----------------------

/// `egret tail --json` for one invocation, writing to a file; killed on drop.
struct Tail {
    child: Child,
    out: PathBuf,
}

impl Tail {
    fn start(agent: &Agent, inv: &str) -> Tail {
        let out = std::env::temp_dir().join(format!("{}.jsonl", unique("egret-tail-")));
        let child = Command::new(egret_bin())
            .arg("--config")
            .arg(&agent.config)
            .args(["tail", "--json", "--invocation-id", inv])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("egret tail");
        Tail { child, out }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for at least `n` records.
    fn wait(&self, n: usize) -> String {
        let deadline = Instant::now() + patience(Duration::from_secs(30));
        loop {
            let t = self.text();
            if t.lines().count() >= n {
                return t;
            }
            assert!(Instant::now() < deadline, "egret tail saw {t:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// Every file under `dir`, concatenated (lossy UTF-8): what is on disk.
fn files_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}

fn anthropic_post(w: &World, cg: &SandboxCgroup, path: &str, body: &str) -> String {
    w.curl(
        cg,
        &[
            "-H",
            "content-type: application/json",
            "-H",
            "x-api-key: sk-ant-header-credential",
            "-H",
            "anthropic-version: 2023-06-01",
            "-d",
            body,
            &format!("https://api.anthropic.com{path}"),
        ],
    )
}

/// A sandboxed curl sends a prompt with an Anthropic-shaped key, an e-mail
/// address, a ticket number (an operator pattern) and a user id (a JSON
/// pointer) — streamed to the Messages API, and to `/echo`, which sends it
/// all back in the response. None of the four appears in the spool's files,
/// the ClickHouse rows (a real server), the OTLP receiver's payloads, `egret
/// tail` or `egret records`; the replacements and the record's markers do,
/// and `/metrics` counts them per rule.
#[test]
fn redaction_reaches_no_spool_clickhouse_otlp_tail_or_records() {
    use bpf_tests::clickhouse_rig::ClickHouseRig;
    if !require_privileges("redaction_e2e") || !require_venv("redaction_e2e") {
        return;
    }
    let Some(rig) = ClickHouseRig::start_or_skip("redaction_e2e") else {
        return;
    };
    let rx = Receiver::start();
    let db = unique("redact_");
    let w = World::start(&format!(
        "store:\n  clickhouse:\n    url: {}\n    database: {db}\n    flushInterval: 200ms\n\
         redaction:\n  builtins: [anthropic_api_key, email]\n  patterns:\n  - {{name: ticket, regex: 'TCK-[0-9]{{6}}'}}\n  jsonPointers: [/metadata/user_id]\n\
         gateways:\n- name: redact-gw\n  routes:\n  - {{name: anthropic, hosts: [api.anthropic.com], provider: anthropic}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    conventions: [openinference]\n    signals: {{metrics: false}}\n",
        rig.url(),
        rx.port
    ));
    let tag = unique("");
    let key = format!("sk-ant-api03-Leak{tag}QQQQQQQQQQQQQQQQQQQQ");
    let email = format!("leaky.{tag}@example.com");
    let ticket = format!("TCK-{:06}", std::process::id() % 1_000_000);
    let user = format!("user-private-{tag}");
    let secrets = [key.as_str(), email.as_str(), ticket.as_str(), user.as_str()];
    let inv = unique("inv-redact-");
    let cg = w.sandbox(&inv, None);
    let tail = Tail::start(&w.agent, &inv);
    // The tail is subscribed once it shows a first (harmless) call.
    anthropic_post(
        &w,
        &cg,
        "/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"warm up"}]}"#,
    );
    tail.wait(1);
    let body = |stream: bool| {
        serde_json::json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 8,
            "stream": stream,
            "metadata": {"user_id": user},
            "messages": [{"role": "user", "content": format!(
                "my key is {key}\nmail me at {email} about {ticket}"
            )}],
        })
        .to_string()
    };
    let streamed = anthropic_post(&w, &cg, "/v1/messages", &body(true));
    assert!(streamed.contains("message_stop"), "{streamed}");
    let echoed = anthropic_post(&w, &cg, "/echo", &body(false));
    assert!(
        echoed.contains(&key),
        "the sandbox gets its bytes unchanged"
    );

    // egret records (from ClickHouse, where it is configured).
    let recs = w.transactions(&inv, 3);
    let records_text = recs
        .iter()
        .map(Record::to_json_line)
        .collect::<Vec<_>>()
        .join("\n");
    let redacted: Vec<&Record> = recs
        .iter()
        .filter(|r| r.get_i64(sc::REDACTION_COUNT).is_some())
        .collect();
    assert_eq!(redacted.len(), 2, "{records_text}");
    let echo = recs
        .iter()
        .find(|r| r.get_str(sc::URL_PATH) == Some("/echo"))
        .unwrap_or_else(|| panic!("{records_text}"));
    // Request and response: key, e-mail, ticket, user id each.
    assert_eq!(echo.get_i64(sc::REDACTION_COUNT), Some(8), "{records_text}");
    assert_eq!(
        echo.get(sc::REDACTION_RULES),
        Some(&egret::record::AttrValue::StrArray(vec![
            "/metadata/user_id".into(),
            "anthropic_api_key".into(),
            "email".into(),
            "ticket".into()
        ]))
    );
    for dir in [sc::REQUEST_BODY, sc::RESPONSE_BODY] {
        let v: Value = serde_json::from_str(echo.get_str(dir).unwrap()).unwrap();
        assert_eq!(v["metadata"]["user_id"], "[REDACTED:/metadata/user_id]");
        assert_eq!(
            v["messages"][0]["content"],
            "my key is [REDACTED:anthropic_api_key]\nmail me at [REDACTED:email] about [REDACTED:ticket]",
            "{dir}"
        );
    }
    let assert_clean = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} holds {s:?}:\n{text}");
        }
        assert!(
            text.contains("[REDACTED:anthropic_api_key]"),
            "{what} lacks the replacement:\n{text}"
        );
    };
    assert_clean("egret records", &records_text);

    // The ClickHouse rows themselves.
    let rows = rig
        .query(&format!(
            "SELECT * FROM {db}.transactions WHERE invocation_id = '{inv}' FORMAT JSONEachRow"
        ))
        .unwrap();
    assert_clean("ClickHouse", &rows);
    assert!(rows.contains("egret.redaction.count"), "{rows}");

    // The spool's segment files on disk.
    let spool = files_text(&w.agent.state_dir.join("spool"));
    assert_clean("the spool", &spool);

    // The OTLP receiver: spans (with input.value/output.value) and logs.
    let inv_v = Value::String(inv.clone());
    let lines = rx.wait("three transaction logs", |l| {
        l.iter()
            .filter(|x| {
                x["signal"] == "logs"
                    && x["attributes"]["invocation.id"] == inv_v
                    && x["attributes"]["egret.record.kind"] == "transaction"
            })
            .count()
            >= 3
            && l.iter()
                .filter(|x| {
                    x["signal"] == "traces"
                        && x["attributes"]["invocation.id"] == inv_v
                        && x["attributes"]["egret.record.kind"] == "transaction"
                })
                .count()
                >= 3
    });
    let otlp = serde_json::to_string(&lines).unwrap();
    assert_clean("OTLP", &otlp);
    assert!(otlp.contains("egret.redaction.count"), "{otlp}");
    assert!(otlp.contains("input.value"), "{otlp}");

    // egret tail.
    let tailed = tail.wait(3);
    assert_clean("egret tail", &tailed);

    // Counted per rule; and the agent's own log never held them either.
    let metrics = w.agent.metrics();
    for (rule, n) in [
        ("anthropic_api_key", 3.0),
        ("email", 3.0),
        ("ticket", 3.0),
        ("/metadata/user_id", 3.0),
    ] {
        assert_eq!(
            prom_value(&metrics, "egret_redactions_total", &[("rule", rule)]),
            Some(n),
            "{rule}: {metrics}"
        );
    }
    for s in secrets {
        assert!(!w.agent.log_text().contains(s), "agent log holds {s}");
    }

    // Reloaded live: a new pattern applies to the next record; a bad one
    // is refused with the rule named, and the rules in force stay.
    let generation = |w: &World| w.agent.status()["config"]["generation"].as_u64().unwrap();
    let base = std::fs::read_to_string(&w.agent.config).unwrap();
    let ticket_rule = "  - {name: ticket, regex: 'TCK-[0-9]{6}'}\n";
    assert!(base.contains(ticket_rule), "{base}");
    let with = |rule: &str| base.replace(ticket_rule, &format!("{ticket_rule}  - {rule}\n"));
    std::fs::write(
        &w.agent.config,
        with("{name: codeword, regex: 'HERON-[A-Z]{4}'}"),
    )
    .unwrap();
    let deadline = Instant::now() + patience(Duration::from_secs(15));
    while generation(&w) < 2 {
        assert!(Instant::now() < deadline, "reload: {}", w.agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    anthropic_post(
        &w,
        &cg,
        "/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"say HERON-WXYZ"}]}"#,
    );
    let recs = w.transactions(&inv, 4);
    let text = recs
        .iter()
        .map(Record::to_json_line)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!text.contains("HERON-WXYZ"), "{text}");
    assert!(text.contains("[REDACTED:codeword]"), "{text}");
    std::fs::write(
        &w.agent.config,
        with("{name: codeword, regex: '(unclosed'}"),
    )
    .unwrap();
    let deadline = Instant::now() + patience(Duration::from_secs(15));
    loop {
        let st = w.agent.status();
        if st["config"]["reloads_rejected"].as_u64() >= Some(1) {
            let err = st["config"]["last_reload_error"].as_str().unwrap_or("");
            assert!(
                err.contains("redaction.patterns[1] (codeword): bad regex"),
                "{err}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bad reload: {}",
            w.agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(generation(&w), 2, "the rules in force stay");
}

/// Content modes of the stores: ClickHouse in `none` mode gets no body
/// text and no detail read from the content while the spool (full) keeps
/// the body; a `metadata` spool bounds ClickHouse (`full`) and `egret
/// tail`, while an OTLP exporter in `full` mode still gets the body (it is
/// handed the in-memory record).
#[test]
fn content_modes_of_the_spool_and_clickhouse() {
    use bpf_tests::clickhouse_rig::ClickHouseRig;
    if !require_privileges("content_modes") || !require_venv("content_modes") {
        return;
    }
    let Some(rig) = ClickHouseRig::start_or_skip("content_modes") else {
        return;
    };
    let routes =
        "  routes:\n  - {name: anthropic, hosts: [api.anthropic.com], provider: anthropic}\n";
    let prompt = |tag: &str| {
        format!(
            r#"{{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{{"role":"user","content":"tell me about herons {tag}"}}]}}"#
        )
    };

    // ClickHouse `none`, spool `full`.
    let db = unique("content_none_");
    let w = World::start(&format!(
        "store:\n  clickhouse:\n    url: {}\n    database: {db}\n    flushInterval: 200ms\n    content: none\ngateways:\n- name: none-gw\n{routes}",
        rig.url()
    ));
    let tag = unique("heron");
    let inv = unique("inv-none-");
    let cg = w.sandbox(&inv, None);
    anthropic_post(&w, &cg, "/v1/messages", &prompt(&tag));
    let rec = &w.transactions(&inv, 1)[0];
    for gone in [
        sc::REQUEST_BODY,
        sc::RESPONSE_BODY,
        sc::URL_PATH,
        sc::GEN_AI_RESPONSE_ID,
    ] {
        assert_eq!(rec.get(gone), None, "{gone}: {}", rec.to_json_line());
    }
    assert!(
        i(rec, sc::GEN_AI_USAGE_OUTPUT_TOKENS) > 0,
        "the envelope stays"
    );
    assert_eq!(
        rec.get_str(sc::GEN_AI_REQUEST_MODEL),
        Some("claude-sonnet-4-5")
    );
    let row = rig
        .query(&format!(
            "SELECT egret_request_body, egret_response_body, url_path, gen_ai_response_id \
             FROM {db}.transactions WHERE invocation_id = '{inv}' FORMAT TSV"
        ))
        .unwrap();
    assert_eq!(row, "\t\t\\N\t\\N\n", "no body text, no details");
    let all = rig
        .query(&format!(
            "SELECT * FROM {db}.transactions FORMAT JSONEachRow"
        ))
        .unwrap();
    assert!(!all.contains(&tag) && !all.contains("msg_"), "{all}");
    let spool = files_text(&w.agent.state_dir.join("spool"));
    assert!(spool.contains(&tag), "the full spool keeps the body");
    drop(w);

    // Spool `metadata`, ClickHouse `full`, an OTLP exporter `full`.
    let rx = Receiver::start();
    let spool_dir = tempfile::tempdir().unwrap();
    let db = unique("content_meta_");
    let w = World::start(&format!(
        "store:\n  spool:\n    dir: {}\n    content: metadata\n  clickhouse:\n    url: {}\n    database: {db}\n    flushInterval: 200ms\ngateways:\n- name: meta-gw\n{routes}  otlp:\n    endpoint: http://127.0.0.1:{}\n    signals: {{metrics: false, traces: false}}\n",
        spool_dir.path().display(),
        rig.url(),
        rx.port
    ));
    let tag = unique("egret");
    let inv = unique("inv-meta-");
    let cg = w.sandbox(&inv, None);
    let tail = Tail::start(&w.agent, &inv);
    anthropic_post(&w, &cg, "/v1/messages", &prompt("warm up"));
    tail.wait(1);
    anthropic_post(&w, &cg, "/v1/messages", &prompt(&tag));
    let recs = w.transactions(&inv, 2);
    for r in &recs {
        assert_eq!(r.get(sc::REQUEST_BODY), None, "{}", r.to_json_line());
        assert_eq!(
            r.get_str(sc::URL_PATH),
            Some("/v1/messages"),
            "details stay"
        );
    }
    let all = rig
        .query(&format!(
            "SELECT * FROM {db}.transactions FORMAT JSONEachRow"
        ))
        .unwrap();
    assert!(
        !all.contains(&tag),
        "ClickHouse has no more than the spool: {all}"
    );
    assert!(!files_text(spool_dir.path()).contains(&tag), "spool");
    assert!(!tail.wait(2).contains(&tag), "tail");
    let inv_v = Value::String(inv.clone());
    let logs = rx.wait("both transaction logs", |l| {
        l.iter()
            .filter(|x| {
                x["signal"] == "logs"
                    && x["attributes"]["invocation.id"] == inv_v
                    && x["attributes"]["egret.record.kind"] == "transaction"
            })
            .count()
            >= 2
    });
    assert!(
        serde_json::to_string(&logs).unwrap().contains(&tag),
        "the OTLP exporter (content: full) gets the in-memory record's body"
    );
}

/// MCP's legacy HTTP+SSE transport through the agent: the official SDK's
/// `sse_client` opens the session's stream, then each request is a `POST`
/// answered `202` whose answer comes on the stream. Each request is one
/// record holding its answer (outcome, `error.type`, the answer as its
/// response body), written as the answer passed on the stream, not when the
/// stream ended; the request the stand-in never answers is written
/// `unanswered` after `node.mcp.unansweredTimeout` while the stream is still
/// open; the spans carry the same.
#[test]
fn mcp_legacy_sse_requests_are_recorded_with_their_answers_from_the_stream() {
    if !require_privileges("mcp_sse") || !require_venv("mcp_sse") {
        return;
    }
    let rx = Receiver::start();
    let mut opts = WorldOptions {
        extra_yaml: format!(
            "gateways:\n- name: mcp-gw\n  routes:\n  - {{name: tools, hosts: [mcp.local], provider: mcp}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    signals: {{metrics: false}}\n",
            rx.port
        ),
        ..WorldOptions::default()
    };
    opts.agent.node_yaml = "mcp:\n  unansweredTimeout: 2s\n".to_owned();
    let w = World::with(opts);
    let inv = unique("inv-mcp-sse-");
    let cg = w.sandbox(&inv, None);
    let py = venv_python().expect("venv checked by require_venv");
    let script = clients_dir().join("mcp_sse_client.py");
    // The client gives up on `stall` after 1 s and keeps the stream open
    // 5 s more: the agent's 2 s timeout fires while the stream is open.
    let out = w.run(
        &cg,
        &py,
        &[
            script.to_str().unwrap(),
            "--stall-seconds",
            "1",
            "--linger-seconds",
            "5",
        ],
    );
    let calls: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("client json line"))
        .collect();
    assert_eq!(calls.len(), 5, "{out}");
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:?}");

    // Wait for the stream's own record (written when it ends) and the
    // never-answered request.
    let recs = w
        .agent
        .wait_records("the SSE stream and the stalled call", |r| {
            let t = txns(r, &inv);
            t.iter()
                .any(|x| x.get_str(sc::HTTP_REQUEST_METHOD) == Some("GET"))
                && t.iter()
                    .any(|x| x.get_str(sc::MCP_ANSWER) == Some("timeout"))
        });
    let recs: Vec<&Record> = txns(&recs, &inv);
    let stream = recs
        .iter()
        .find(|r| r.get_str(sc::HTTP_REQUEST_METHOD) == Some("GET"))
        .unwrap();
    let line = stream.to_json_line();
    assert_eq!(stream.get_str(sc::URL_PATH), Some("/sse"), "{line}");
    assert_eq!(stream.get_str(sc::MCP_TRANSPORT), Some("sse"), "{line}");
    let endpoint = stream.get_str(sc::MCP_SSE_ENDPOINT).expect("endpoint");
    let sid = endpoint
        .strip_prefix("/messages/?session_id=")
        .expect("the SDK server's endpoint form");
    assert_eq!(stream.get_str(sc::MCP_SESSION_ID), Some(sid), "{line}");
    // initialize, tools/list, echo, fail: four answers on the stream.
    assert_eq!(stream.get_i64(sc::MCP_SSE_MESSAGES), Some(4), "{line}");
    let stream_end = stream.get_i64(sc::END_TIME).unwrap();

    let call = |method: &str, tool: Option<&str>| -> &Record {
        let found: Vec<&&Record> = recs
            .iter()
            .filter(|r| {
                r.get_str(sc::MCP_METHOD_NAME) == Some(method)
                    && r.get_str(sc::GEN_AI_TOOL_NAME) == tool
            })
            .collect();
        assert_eq!(found.len(), 1, "one record for {method} {tool:?}");
        found[0]
    };
    let answered = |r: &Record| -> Value {
        let line = r.to_json_line();
        assert_eq!(r.get_str(sc::MCP_TRANSPORT), Some("sse"), "{line}");
        assert_eq!(r.get_str(sc::MCP_ANSWER), Some("stream"), "{line}");
        assert_eq!(
            r.get_i64(sc::HTTP_RESPONSE_STATUS_CODE),
            Some(202),
            "{line}"
        );
        assert_eq!(r.get_str(sc::URL_PATH), Some("/messages/"), "{line}");
        assert_eq!(r.get_str(sc::MCP_SESSION_ID), Some(sid), "{line}");
        // Written as the answer passed, before the stream ended; its
        // duration runs to the answer, past the 202.
        assert!(r.get_i64(sc::END_TIME).unwrap() < stream_end, "{line}");
        let ms = |k| match r.get(k) {
            Some(egret::record::AttrValue::Float(f)) => *f,
            other => panic!("{k}: {other:?}: {line}"),
        };
        assert!(ms(sc::MCP_ACCEPTED_MS) <= ms(sc::DURATION_MS), "{line}");
        let body = body_json(r, sc::RESPONSE_BODY);
        assert_eq!(
            body["id"].to_string(),
            r.get_str(sc::JSONRPC_REQUEST_ID).unwrap(),
            "{line}"
        );
        body
    };

    let init = call("initialize", None);
    let body = answered(init);
    assert_eq!(
        init.get_str(sc::MCP_PROTOCOL_VERSION),
        body["result"]["protocolVersion"].as_str()
    );
    assert_eq!(init.get(sc::ERROR_TYPE), None);
    let list = call("tools/list", None);
    let list_body = answered(list);
    let tools: Vec<&str> = list_body["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(tools.contains(&"stall"), "{tools:?}");
    let echo = call("tools/call", Some("echo"));
    assert_eq!(
        answered(echo)["result"]["content"][0]["text"],
        "hello over sse"
    );
    assert_eq!(echo.get(sc::ERROR_TYPE), None);
    let failed = call("tools/call", Some("fail"));
    assert_eq!(answered(failed)["result"]["isError"], true);
    assert_eq!(failed.get_str(sc::ERROR_TYPE), Some("tool_error"));

    let stalled = call("tools/call", Some("stall"));
    let line = stalled.to_json_line();
    assert_eq!(
        stalled.get_str(sc::ERROR_TYPE),
        Some("unanswered"),
        "{line}"
    );
    assert_eq!(stalled.get_str(sc::MCP_ANSWER), Some("timeout"), "{line}");
    // The 202's `text/plain` body is not captured (the gateway's content
    // types); no answer took its place.
    assert_eq!(stalled.get(sc::RESPONSE_BODY), None, "{line}");
    assert!(
        matches!(stalled.get(sc::DURATION_MS), Some(egret::record::AttrValue::Float(f)) if *f >= 2000.0),
        "{line}"
    );
    assert!(
        stalled.get_i64(sc::END_TIME).unwrap() < stream_end,
        "{line}"
    );
    // Notifications are recorded as they were: a 202, nothing awaited.
    let note = call("notifications/initialized", None);
    assert_eq!(note.get_str(sc::MCP_TRANSPORT), Some("sse"));
    assert_eq!(note.get(sc::MCP_ANSWER), None);
    assert_eq!(note.get(sc::ERROR_TYPE), None);

    // The spans: `{method} {target}`, with the answer's `error.type`.
    let lines = wait_spans(&rx, &inv, recs.len());
    for (r, name, error) in [
        (echo, "tools/call echo", None),
        (failed, "tools/call fail", Some("tool_error")),
        (stalled, "tools/call stall", Some("unanswered")),
        (init, "initialize", None),
    ] {
        let span = span_of(&lines, r);
        assert_eq!(span["name"], name, "{span}");
        assert_eq!(span["attributes"]["error.type"].as_str(), error, "{span}");
    }
}

/// Structured content of WebSocket sessions: the official `openai` SDK's
/// Realtime client (instructions, a tool, the model's call, the tool's
/// output, the answer) and its Responses WebSocket mode, through egret to
/// the stand-in. Each response's `gen_ai.*.messages` are assembled from
/// the messages its record kept: the call's name, id and arguments, the
/// answer's text, exactly as the SDK joined them from the same deltas. A
/// redaction rule over the tool's output reaches the kept messages: the
/// value is in neither the spool nor the spans.
#[test]
fn websocket_structured_content_matches_what_the_openai_sdk_joined() {
    if !require_privileges("websocket_content") || !require_venv("websocket_content") {
        return;
    }
    let rx = Receiver::start();
    let w = World::start(&format!(
        "redaction:\n  patterns:\n  - {{name: bird, regex: 'grey heron'}}\n\
         gateways:\n- name: content\n  routes:\n  - {{name: openai, hosts: [api.openai.com], provider: openai}}\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    messages: true\n    conventions: [openinference]\n    signals: {{logs: false, metrics: false}}\n",
        rx.port
    ));
    let inv = unique("inv-ws-content-");
    let cg = w.sandbox(&inv, None);
    let py = venv_python().expect("venv");
    let script = clients_dir().join("realtime_client.py");
    let calls: Vec<Value> = w
        .run(&cg, &py, &[script.to_str().unwrap(), "--tools"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("client json line"))
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:?}");
    // Three responses and two sessions.
    let recs = w.transactions(&inv, 5);
    let lines = wait_spans(&rx, &inv, 5);
    let by_id = |c: &Value| -> &Record {
        recs.iter()
            .find(|r| r.get_str(sc::GEN_AI_RESPONSE_ID) == c["id"].as_str())
            .unwrap_or_else(|| panic!("no record for {c}"))
    };
    let call = |name: &str| calls.iter().find(|c| c["call"] == name).unwrap();

    // The model calls the tool.
    let c = call("realtime_tool_call");
    let rec = by_id(c);
    assert_eq!(rec.get_str(sc::GENAI_API), Some("openai.realtime"));
    assert_eq!(rec.get_bool(sc::REQ_TRUNCATED), Some(false));
    let span = span_of(&lines, rec);
    let out = json_attr(span, "gen_ai.output.messages");
    assert_eq!(
        out[0]["parts"],
        serde_json::json!([{"type": "tool_call", "id": c["call_id"], "name": c["name"], "arguments": c["arguments"]}]),
        "{out}"
    );
    assert_eq!(out[0]["finish_reason"], c["status"]);
    let input = json_attr(span, "gen_ai.input.messages");
    assert_eq!(input[0]["role"], "user", "{input}");
    assert_eq!(input[0]["parts"][0]["content"], "Name a wading bird");
    let system = json_attr(span, "gen_ai.system_instructions");
    assert_eq!(system[0]["content"], "Answer in one line.");
    let tools = json_attr(span, "gen_ai.tool.definitions");
    assert_eq!(tools[0]["name"], c["name"], "{tools}");
    assert_eq!(span["attributes"]["egret.messages.complete"], true);
    assert_eq!(
        span["attributes"]["llm.output_messages.0.message.tool_calls.0.tool_call.function.name"],
        c["name"]
    );

    // The tool's output goes back; the model answers.
    let a = call("realtime_tool_answer");
    let rec = by_id(a);
    let span = span_of(&lines, rec);
    let input = json_attr(span, "gen_ai.input.messages");
    let sent = a["output"].as_str().unwrap();
    assert!(sent.contains("grey heron"), "{a}");
    assert_eq!(
        input[0],
        serde_json::json!({"role": "tool", "parts": [{"type": "tool_call_response", "id": c["call_id"],
            "response": sent.replace("grey heron", "[REDACTED:bird]")}]}),
        "{input}"
    );
    assert_eq!(
        rec.get_i64(sc::REDACTION_COUNT),
        Some(1),
        "{}",
        rec.to_json_line()
    );
    for r in &recs {
        assert!(
            !r.to_json_line().contains("grey heron"),
            "{}",
            r.to_json_line()
        );
    }
    for l in &lines {
        assert!(!l.to_string().contains("grey heron"), "{l}");
    }
    let out = json_attr(span, "gen_ai.output.messages");
    assert!(!a["text"].as_str().unwrap().is_empty());
    assert_eq!(
        out[0]["parts"],
        serde_json::json!([{"type": "text", "content": a["text"]}])
    );

    // Responses over WebSocket reads as the HTTP API does.
    let r = call("responses_ws");
    let rec = by_id(r);
    assert_eq!(
        rec.get_str(sc::GENAI_API),
        Some("openai.responses_websocket")
    );
    let span = span_of(&lines, rec);
    let out = json_attr(span, "gen_ai.output.messages");
    assert_eq!(
        out[0]["parts"],
        serde_json::json!([{"type": "text", "content": r["text"]}])
    );
    let system = json_attr(span, "gen_ai.system_instructions");
    assert_eq!(system[0]["content"], "Be brief.");
    assert_eq!(
        span["attributes"]["llm.output_messages.0.message.content"],
        r["text"]
    );
}
