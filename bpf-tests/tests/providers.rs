//! Clouds and OpenAI-compatible servers through egret, each with its
//! official client in a sandbox, at its real hostname (the sandbox's hosts
//! file maps every name to our provider stand-in): Azure OpenAI, Groq,
//! Mistral, DeepSeek, xAI, OpenRouter, Anthropic and Gemini on Vertex AI —
//! on the **embedded default** configuration, which must route every
//! provider egret parses — and Ollama's native API and a self-hosted
//! OpenAI-compatible server over plain HTTP on routes of the test's own.
//!
//! For every call the record's provider name, operation, models, stream
//! flag and usage must equal what the client parsed from the stand-in.
use bpf_tests::{world::*, *};
use egret::{
    record::{AttrValue, Record},
    semconv as sc,
};
use serde_json::Value;

/// The transaction of one client call: same provider, stream flag, and the
/// call's `path_hint` in its host or path.
fn record_of<'a>(recs: &'a [Record], call: &Value) -> &'a Record {
    let provider = call["provider"].as_str().unwrap();
    let hint = call["path_hint"].as_str().unwrap();
    let stream = call["stream"].as_bool();
    let found: Vec<&Record> = recs
        .iter()
        .filter(|r| {
            let at = format!(
                "{}{}",
                r.get_str(sc::SERVER_ADDRESS).unwrap_or(""),
                r.get_str(sc::URL_PATH).unwrap_or("")
            );
            r.get_str(sc::GEN_AI_PROVIDER_NAME) == Some(provider)
                && at.contains(hint)
                && r.get_bool(sc::GEN_AI_REQUEST_STREAM) == stream
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one transaction for {call} in:\n{}",
        recs.iter()
            .map(Record::to_json_line)
            .collect::<Vec<_>>()
            .join("\n")
    );
    found[0]
}

/// Every call's record says what the client saw.
fn assert_calls_recorded(calls: &[Value], recs: &[Record]) {
    for call in calls {
        let r = record_of(recs, call);
        let line = r.to_json_line();
        let model = call["model"].as_str().unwrap();
        assert_eq!(
            r.get_str(sc::GEN_AI_RESPONSE_MODEL)
                .or(r.get_str(sc::GEN_AI_REQUEST_MODEL)),
            Some(model),
            "{call}\n{line}"
        );
        assert!(r.get_str(sc::GEN_AI_REQUEST_MODEL).is_some(), "{line}");
        assert!(r.get_str(sc::GEN_AI_OPERATION_NAME).is_some(), "{line}");
        for (key, attr) in [
            ("input_tokens", sc::GEN_AI_USAGE_INPUT_TOKENS),
            ("output_tokens", sc::GEN_AI_USAGE_OUTPUT_TOKENS),
        ] {
            assert_eq!(
                r.get_i64(attr),
                call["usage"][key].as_i64(),
                "{key}: {call}\n{line}"
            );
        }
        assert_eq!(r.get(sc::PARSE_ERROR), None, "{line}");
        assert_eq!(
            r.get_i64(sc::HTTP_RESPONSE_STATUS_CODE),
            Some(200),
            "{line}"
        );
        // The deprecated name carries the same value.
        assert_eq!(
            r.get_str(sc::GEN_AI_SYSTEM),
            r.get_str(sc::GEN_AI_PROVIDER_NAME)
        );
    }
}

#[test]
fn clouds_and_compatible_servers_on_the_embedded_default() {
    if !require_privileges("providers_default") || !require_venv("providers_default") {
        return;
    }
    // No `gateways` key: the embedded default's routes apply.
    let w = World::start("");
    let inv = unique("inv-clouds-");
    let cg = w.sandbox(&inv, None);
    let py = venv_python().unwrap();
    let script = clients_dir().join("clouds_client.py");
    let out = w.run(
        &cg,
        &py,
        &[script.to_str().unwrap(), "azure", "compatible", "vertex"],
    );
    let calls: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Azure 2, five compatible servers 2 each, Vertex 4.
    assert_eq!(calls.len(), 16, "{out}");
    let recs = w.transactions(&inv, calls.len());
    assert_calls_recorded(&calls, &recs);

    // Azure: the deployment is in the path; egret asked the stream for
    // usage (Azure accepts `include_usage`) — the client asked too, so the
    // usage it saw is the recorded one.
    let azure = record_of(&recs, &calls[0]);
    assert_eq!(azure.get_str(sc::GEN_AI_REQUEST_MODEL), Some("prod-gpt4o"));
    assert_eq!(
        azure.get_str(sc::SERVER_ADDRESS),
        Some("egret-test.openai.azure.com")
    );
    // Vertex: Claude's model comes from the path (the body has none).
    let claude = calls
        .iter()
        .find(|c| c["call"] == "messages_stream")
        .unwrap();
    let r = record_of(&recs, claude);
    assert_eq!(
        r.get_str(sc::GEN_AI_REQUEST_MODEL),
        Some("claude-sonnet-4@20250514")
    );
    assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), Some("chat"));
    assert!(r.get(sc::GEN_AI_RESPONSE_FINISH_REASONS).is_some());
    // No request to a compatible server was rewritten (only OpenAI and
    // Azure are known to accept `include_usage`).
    for r in &recs {
        let name = r.get_str(sc::GEN_AI_PROVIDER_NAME).unwrap();
        if !["openai", "azure.ai.openai"].contains(&name) {
            assert_eq!(r.get(sc::BODY_REQUEST_REWRITTEN), None, "{name}");
        }
    }

    // An event far larger than the body capture (64 KiB by default): a
    // Responses stream whose terminal event carries the whole output and
    // the usage. The capture is cut; the usage is not lost.
    let words = 20_000;
    let sse = w.curl(
        &cg,
        &[
            "-N",
            "https://api.openai.com/v1/responses",
            "-H",
            "content-type: application/json",
            "-H",
            "authorization: Bearer sk-test",
            "-H",
            &format!("x-mock-output-tokens: {words}"),
            "-d",
            r#"{"model":"gpt-4.1","input":"Tell me about egrets","stream":true}"#,
        ],
    );
    let biggest = sse.split("\n\n").map(str::len).max().unwrap_or(0);
    assert!(biggest > 100 * 1024, "largest event {biggest} bytes");
    let recs = w.transactions(&inv, calls.len() + 1);
    let big = recs
        .iter()
        .find(|r| r.get_str(sc::URL_PATH) == Some("/v1/responses"))
        .expect("the large stream's record");
    assert_eq!(
        big.get_bool(sc::RESP_TRUNCATED),
        Some(true),
        "{}",
        big.to_json_line()
    );
    assert_eq!(big.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(words));
    assert!(big.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS).is_some());
    assert_eq!(big.get(sc::PARSE_ERROR), None);
}

#[test]
fn ollama_and_a_self_hosted_server_over_plain_http() {
    if !require_privileges("providers_local") || !require_venv("providers_local") {
        return;
    }
    // Ollama's host is no public API: its route says `http` and egret
    // finds Ollama from the path and body. The vLLM-style server is named
    // by its route.
    let w = World::with(WorldOptions {
        extra_yaml: "gateways:\n- name: local\n  routes:\n  - {name: ollama, hosts: [ollama.local], provider: http}\n  - {name: vllm, hosts: [vllm.local], provider: vllm, format: openai}\n".into(),
        plain_ports: vec![11434],
        ..WorldOptions::default()
    });
    let inv = unique("inv-local-");
    let cg = w.sandbox(&inv, None);
    let py = venv_python().unwrap();
    let script = clients_dir().join("clouds_client.py");
    let out = w.run(&cg, &py, &[script.to_str().unwrap(), "ollama", "vllm"]);
    let calls: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 6, "{out}");
    let recs = w.transactions(&inv, calls.len());
    assert_calls_recorded(&calls, &recs);
    let chat_stream = calls.iter().find(|c| c["call"] == "chat_stream").unwrap();
    let r = record_of(&recs, chat_stream);
    assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), Some("chat"));
    assert!(
        matches!(
            r.get(sc::GEN_AI_RESPONSE_FINISH_REASONS),
            Some(AttrValue::StrArray(a))
                if a.len() == 1 && Some(a[0].as_str()) == chat_stream["finish_reason"].as_str()
        ),
        "{}",
        r.to_json_line()
    );
    let embed = calls.iter().find(|c| c["call"] == "embed").unwrap();
    let r = record_of(&recs, embed);
    assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), Some("embeddings"));

    // `egret records` filters what it prints.
    let cli = |args: &[&str]| -> String {
        let out = w.agent.cli(&[&["records"][..], args].concat());
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let array: Vec<Value> =
        serde_json::from_str(&cli(&["--provider", "ollama", "--output", "json"])).unwrap();
    assert_eq!(array.len(), 4, "{array:?}");
    assert!(array.iter().all(|r| r["gen_ai.provider.name"] == "ollama"));
    let lines = cli(&[
        "--provider",
        "vllm",
        "--kind",
        "transaction",
        "--output",
        "ndjson",
    ]);
    assert_eq!(lines.lines().count(), 2, "{lines}");
    let newest = recs.iter().map(Record::start_ns).max().unwrap();
    let last = cli(&["--invocation-id", &inv, "--limit", "1", "--json"]);
    let last: Value = serde_json::from_str(last.trim()).unwrap();
    assert_eq!(last["egret.start_time_unix_nano"].as_i64(), Some(newest));
    assert_eq!(
        cli(&["--model", "no-such-model", "--output", "ndjson"]),
        String::new()
    );
    let table = cli(&["--status", "200", "--agent-namespace", "tests"]);
    assert!(table.starts_with("END "), "{table}");
    assert!(table.lines().count() > calls.len(), "{table}");

    // `--follow` prints a record written after it started.
    let inv2 = unique("inv-follow-");
    /// Killed on drop, so a failing assertion leaves no follower behind.
    struct Follower(std::process::Child);
    impl Drop for Follower {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follow = Follower(
        std::process::Command::new(egret_bin())
            .arg("--config")
            .arg(&w.agent.config)
            .args([
                "records",
                "--follow",
                "--output",
                "ndjson",
                "--kind",
                "transaction",
                "--invocation-id",
                &inv2,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = follow.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let cg2 = w.sandbox(&inv2, None);
    w.curl(
        &cg2,
        &[
            "http://ollama.local:11434/api/generate",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"llama3.2","prompt":"hi","stream":false}"#,
        ],
    );
    let line = rx
        .recv_timeout(patience(std::time::Duration::from_secs(30)))
        .expect("--follow printed the new record");
    let rec: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(rec["invocation.id"], inv2.as_str(), "{line}");
    assert_eq!(rec["egret.record.kind"], "transaction", "{line}");
    assert_eq!(rec["gen_ai.operation.name"], "text_completion", "{line}");
    drop(follow);
}
