//! WebSocket sessions end to end: a sandbox (real cgroup, kernel redirect)
//! runs the official `openai` SDK's Realtime and Responses-over-WebSocket
//! connections (and the `websockets` library, which offers
//! permessage-deflate) against the providers' real hostnames; egret relays
//! the upgrades to the mock provider and writes one record per model
//! response plus one per session.
use std::collections::HashMap;

use bpf_tests::{world::*, *};
use egret::{record::Record, semconv as sc};
use serde_json::Value;

fn i(rec: &Record, key: &str) -> i64 {
    rec.get_i64(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", rec.to_json_line()))
}

/// `realtime_client.py ARGS` in the sandbox: one JSON value per line.
fn client(w: &World, cg: &SandboxCgroup, args: &[&str]) -> Vec<Value> {
    let py = venv_python().expect("venv checked by require_venv");
    let script = clients_dir().join("realtime_client.py");
    w.run(cg, &py, &[&[script.to_str().unwrap()], args].concat())
        .lines()
        .map(|l| serde_json::from_str(l).expect("client json line"))
        .collect()
}

fn kind<'a>(recs: &'a [Record], k: &str) -> Vec<&'a Record> {
    recs.iter()
        .filter(|r| r.get_str(sc::WEBSOCKET_KIND) == Some(k))
        .collect()
}

fn dump(recs: &[Record]) -> String {
    recs.iter()
        .map(Record::to_json_line)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn realtime_and_responses_over_websocket_are_recorded_per_response() {
    if !require_privileges("websocket_sdk") || !require_venv("websocket_sdk") {
        return;
    }
    let w = World::start("");
    let inv = unique("inv-ws-");
    let cg = w.sandbox(&inv, None);
    let calls = client(&w, &cg, &[]);
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:?}");
    // Four responses, three sessions (realtime, responses, websockets).
    let recs = w.agent.wait_records("transactions", |r| {
        let t: Vec<Record> = txns(r, &inv).into_iter().cloned().collect();
        kind(&t, "response").len() >= 4 && kind(&t, "session").len() >= 3
    });
    let recs: Vec<Record> = txns(&recs, &inv).into_iter().cloned().collect();
    let responses = kind(&recs, "response");
    let sessions = kind(&recs, "session");
    assert_eq!((responses.len(), sessions.len()), (4, 3), "{}", dump(&recs));
    let session_of: HashMap<&str, &Record> = sessions
        .iter()
        .map(|s| (s.get_str(sc::RECORD_ID).unwrap(), *s))
        .collect();

    for c in &calls {
        let id = c["id"].as_str().expect("the SDK saw a response id");
        let r = responses
            .iter()
            .find(|r| r.get_str(sc::GEN_AI_RESPONSE_ID) == Some(id))
            .unwrap_or_else(|| panic!("no record for {c}:\n{}", dump(&recs)));
        let line = r.to_json_line();
        assert_eq!(
            r.get_str(sc::GEN_AI_PROVIDER_NAME),
            Some("openai"),
            "{line}"
        );
        assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), Some("chat"), "{line}");
        assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true), "{line}");
        assert_eq!(
            r.get_str(sc::GEN_AI_RESPONSE_MODEL),
            c["model"].as_str(),
            "{line}"
        );
        assert_eq!(
            (
                i(r, sc::GEN_AI_USAGE_INPUT_TOKENS),
                i(r, sc::GEN_AI_USAGE_OUTPUT_TOKENS)
            ),
            (
                c["usage"]["input_tokens"].as_i64().unwrap(),
                c["usage"]["output_tokens"].as_i64().unwrap()
            ),
            "{line}"
        );
        if let Some(cached) = c["usage"]["cached_tokens"].as_i64() {
            assert_eq!(i(r, sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS), cached);
        }
        let reason = match c["status"].as_str() {
            Some("incomplete") => "max_output_tokens",
            Some(s) => s,
            None => panic!("{c}"),
        };
        assert_eq!(
            r.get(sc::GEN_AI_RESPONSE_FINISH_REASONS),
            Some(&vec![reason.to_owned()].into()),
            "{line}"
        );
        assert!(r.get(sc::PARSE_ERROR).is_none(), "{line}");
        assert!(
            i(r, sc::REQ_BYTES) > 0 && i(r, sc::RESP_BYTES) > 0,
            "{line}"
        );
        let want_request_model = match c["call"].as_str() {
            Some("realtime") => "gpt-realtime",
            _ => "gpt-4.1-mini",
        };
        assert_eq!(
            r.get_str(sc::GEN_AI_REQUEST_MODEL),
            Some(want_request_model),
            "{line}"
        );
        // Attributed and traced like the upgrade it belongs to.
        let s = session_of[r.get_str(sc::WEBSOCKET_SESSION_ID).expect("session id")];
        for key in [
            sc::AGENT_NAME,
            sc::TRACE_ID,
            sc::SERVER_ADDRESS,
            sc::URL_PATH,
        ] {
            assert_eq!(r.get_str(key), s.get_str(key), "{key}: {line}");
        }
        assert_eq!(r.get_str(sc::PARENT_SPAN_ID), s.get_str(sc::SPAN_ID));
        assert_ne!(r.get_str(sc::SPAN_ID), s.get_str(sc::SPAN_ID));
    }
    for s in &sessions {
        let line = s.to_json_line();
        assert_eq!(i(s, sc::HTTP_RESPONSE_STATUS_CODE), 101, "{line}");
        assert!(s.get(sc::GEN_AI_USAGE_INPUT_TOKENS).is_none(), "{line}");
        let id = s.get_str(sc::RECORD_ID).unwrap();
        let mine: Vec<&&Record> = responses
            .iter()
            .filter(|r| r.get_str(sc::WEBSOCKET_SESSION_ID) == Some(id))
            .collect();
        assert_eq!(i(s, sc::WEBSOCKET_RESPONSES), mine.len() as i64, "{line}");
        assert_eq!(i(s, sc::WEBSOCKET_MESSAGES_SKIPPED), 0, "{line}");
        // The responses' frames are part of the session's bytes.
        let sum = |k: &str| mine.iter().map(|r| i(r, k)).sum::<i64>();
        assert!(sum(sc::REQ_BYTES) <= i(s, sc::REQ_BYTES), "{line}");
        assert!(sum(sc::RESP_BYTES) <= i(s, sc::RESP_BYTES), "{line}");
        assert!(sum(sc::RESP_BYTES) > 0, "{line}");
        // The session's L4 window holds at least its frames.
        assert!(
            i(s, sc::L4_BYTES_SANDBOX_RX) >= i(s, sc::RESP_BYTES),
            "{line}"
        );
        // Closed with the close handshake: no error.
        assert_eq!(i(s, sc::WEBSOCKET_CLOSE_CODE), 1000, "{line}");
        assert!(s.get(sc::ERROR_TYPE).is_none(), "{line}");
    }
    let realtime: Vec<&Value> = calls.iter().filter(|c| c["call"] == "realtime").collect();
    assert_eq!(realtime.len(), 2, "two responses in one session");
    let rt_sessions: std::collections::HashSet<&str> = responses
        .iter()
        .filter(|r| r.get_str(sc::URL_PATH) == Some("/v1/realtime"))
        .map(|r| r.get_str(sc::WEBSOCKET_SESSION_ID).unwrap())
        .collect();
    assert_eq!(rt_sessions.len(), 1);

    // permessage-deflate: the `websockets` client offered it, egret did
    // not pass the offer on, and the session ran uncompressed.
    let ws = calls
        .iter()
        .find(|c| c["call"] == "websockets_deflate")
        .unwrap();
    assert_eq!(ws["offered_upstream"], Value::Null, "{ws}");
    assert_eq!(ws["extensions"], serde_json::json!([]), "{ws}");
}

#[test]
fn websocket_refusals_and_cut_sessions_are_recorded() {
    if !require_privileges("websocket_refusals") || !require_venv("websocket_refusals") {
        return;
    }
    let w = World::start(
        "gateways:\n- name: ws-gw\n  defaultPolicy: deny-all\n  routes:\n  - {name: openai, hosts: [api.openai.com], provider: openai}\n",
    );
    // The policy denies the host: 403 from egret, never upstream, recorded.
    let inv = unique("inv-wsdeny-");
    let cg = w.sandbox(&inv, None);
    let out = client(&w, &cg, &["--denied-host", "denied.example"]);
    assert_eq!(out[0]["status"], 403, "{out:?}");
    let r = &w.transactions(&inv, 1)[0];
    assert_eq!(
        r.get_bool(sc::POLICY_DENIED),
        Some(true),
        "{}",
        r.to_json_line()
    );
    assert_eq!(i(r, sc::HTTP_RESPONSE_STATUS_CODE), 403);
    assert_eq!(r.get_str(sc::URL_PATH), Some("/v1/realtime"));
    assert_eq!(r.get_str(sc::ERROR_TYPE), Some("policy_denied"));
    assert!(r.get(sc::WEBSOCKET_KIND).is_none());

    // The provider refuses the upgrade (no model): its answer goes back
    // and is recorded like any response.
    let inv = unique("inv-wsrefused-");
    let cg = w.sandbox(&inv, None);
    let out = client(&w, &cg, &["--denied-host", "api.openai.com", "--model="]);
    assert_eq!(out[0]["status"], 400, "{out:?}");
    let r = &w.transactions(&inv, 1)[0];
    assert_eq!(
        i(r, sc::HTTP_RESPONSE_STATUS_CODE),
        400,
        "{}",
        r.to_json_line()
    );
    assert_eq!(r.get_bool(sc::POLICY_DENIED), Some(false));
    assert!(r.get(sc::WEBSOCKET_KIND).is_none());

    // A message larger than egret parses is relayed whole (the provider
    // counted every word of it), counted, and flags the response.
    let inv = unique("inv-wsbig-");
    let cg = w.sandbox(&inv, None);
    let out = client(&w, &cg, &["--big"]);
    let c = &out[0];
    assert_eq!(c["usage"]["input_tokens"], 1 << 20, "{c}");
    let recs = w.transactions(&inv, 2);
    let resp = recs
        .iter()
        .find(|r| r.get_str(sc::WEBSOCKET_KIND) == Some("response"))
        .unwrap_or_else(|| panic!("{}", dump(&recs)));
    assert_eq!(resp.get_str(sc::GEN_AI_RESPONSE_ID), c["id"].as_str());
    assert_eq!(i(resp, sc::GEN_AI_USAGE_INPUT_TOKENS), 1 << 20);
    assert_eq!(
        resp.get_str(sc::PARSE_ERROR),
        Some("websocket_message_too_large")
    );
    assert!(i(resp, sc::REQ_BYTES) > c["sent"].as_i64().unwrap());
    let session = recs
        .iter()
        .find(|r| r.get_str(sc::WEBSOCKET_KIND) == Some("session"))
        .unwrap();
    // The item, and the server's two echoes of it.
    assert_eq!(i(session, sc::WEBSOCKET_MESSAGES_SKIPPED), 3);

    // The client leaves mid-response: the response still gets its record,
    // marked truncated, beside the session's.
    let inv = unique("inv-wscut-");
    let cg = w.sandbox(&inv, None);
    let out = client(&w, &cg, &["--cut"]);
    let id = out[0]["id"].as_str().expect("response id").to_owned();
    let recs = w.transactions(&inv, 2);
    let resp = recs
        .iter()
        .find(|r| r.get_str(sc::WEBSOCKET_KIND) == Some("response"))
        .unwrap_or_else(|| panic!("{}", dump(&recs)));
    assert_eq!(resp.get_str(sc::GEN_AI_RESPONSE_ID), Some(id.as_str()));
    assert_eq!(resp.get_str(sc::PARSE_ERROR), Some("truncated"));
    assert_eq!(resp.get_str(sc::GEN_AI_REQUEST_MODEL), Some("gpt-realtime"));
    assert!(resp.get(sc::GEN_AI_USAGE_OUTPUT_TOKENS).is_none());
    let session = recs
        .iter()
        .find(|r| r.get_str(sc::WEBSOCKET_KIND) == Some("session"))
        .unwrap();
    assert_eq!(i(session, sc::WEBSOCKET_RESPONSES), 1);
    assert_eq!(i(session, sc::HTTP_RESPONSE_STATUS_CODE), 101);
}
