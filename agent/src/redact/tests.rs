use base64::Engine;

use super::*;

const ANT: &str = "sk-ant-api03-SECRETSECRETSECRETSECRET";

fn redactor(yaml: &str) -> Redactor {
    let cfg: RedactionConfig = serde_norway::from_str(yaml).unwrap();
    Redactor::new(&cfg).unwrap()
}

fn txn(body: &str) -> Record {
    let mut r = Record::new(sc::KIND_TRANSACTION);
    r.set(sc::REQUEST_BODY, body);
    r.set(sc::REQUEST_CONTENT_TYPE, "application/json");
    r
}

fn body(r: &Record) -> &str {
    r.get_str(sc::REQUEST_BODY).unwrap()
}

fn json(r: &Record) -> serde_json::Value {
    serde_json::from_str(body(r)).unwrap_or_else(|e| panic!("{e}: {}", body(r)))
}

#[test]
fn no_rules_touch_nothing() {
    let red = Redactor::new(&RedactionConfig::default()).unwrap();
    assert!(red.is_empty());
    let stats = RedactionStats::default();
    let mut r = txn(&format!("{{\"k\":\"{ANT}\"}}"));
    let before = r.clone();
    red.apply(&mut r, &stats);
    assert_eq!(r, before);
}

#[test]
fn a_builtin_secret_in_a_json_body_is_replaced_and_counted() {
    let red = redactor("builtins: [anthropic_api_key, openai_api_key, email]");
    let stats = RedactionStats::default();
    let mut r = txn(&format!(
        r#"{{"messages":[{{"role":"user","content":"key {ANT} and sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX, mail bob@example.com"}}]}}"#
    ));
    r.set(sc::URL_PATH, "/v1/users/alice@example.org/messages");
    red.apply(&mut r, &stats);
    let v = json(&r);
    assert_eq!(
        v["messages"][0]["content"],
        "key [REDACTED:anthropic_api_key] and [REDACTED:openai_api_key], mail [REDACTED:email]"
    );
    assert_eq!(
        r.get_str(sc::URL_PATH),
        Some("/v1/users/[REDACTED:email]/messages"),
        "content details are redacted too"
    );
    assert_eq!(r.get_i64(sc::REDACTION_COUNT), Some(4));
    assert_eq!(
        r.get(sc::REDACTION_RULES),
        Some(&AttrValue::StrArray(vec![
            "anthropic_api_key".into(),
            "email".into(),
            "openai_api_key".into()
        ]))
    );
    let by = stats.by_rule();
    assert_eq!(by["email"], 2);
    assert_eq!(by["anthropic_api_key"], 1);
    // Flows carry no content: untouched.
    let mut f = Record::new(sc::KIND_FLOW);
    f.set(sc::URL_PATH, "bob@example.com");
    red.apply(&mut f, &stats);
    assert_eq!(f.get_str(sc::URL_PATH), Some("bob@example.com"));
}

/// A secret spelled with a JSON escape (`\u002d` for `-`) is found in the
/// decoded string; a pattern that, on the raw text, would stop in the
/// middle of an escape (`\"`) cuts the decoded string instead, so the JSON
/// stays valid; a PEM block whose newlines are `\n` escapes goes whole.
#[test]
fn regexes_match_decoded_json_strings_never_across_an_escape() {
    let red = redactor(
        "builtins: [anthropic_api_key, private_key]\npatterns: [{name: tok, regex: 'tok_[^\"]+'}]",
    );
    let stats = RedactionStats::default();
    let hidden = ANT.replace('-', "\\u002d");
    let text = format!(
        r#"{{"a":"{hidden}","b":"x tok_abc\"after","pem":"-----BEGIN PRIVATE KEY-----\nMIIEvQIB\nADAN\n-----END PRIVATE KEY-----\ntail"}}"#
    );
    // On the raw text the pattern would end at the backslash of `\"`.
    let raw = regex::Regex::new(r#"tok_[^"]+"#).unwrap();
    assert_eq!(raw.find(&text).unwrap().as_str(), "tok_abc\\");
    let mut r = txn(&text);
    red.apply(&mut r, &stats);
    let v = json(&r);
    assert_eq!(v["a"], "[REDACTED:anthropic_api_key]");
    assert_eq!(v["b"], "x [REDACTED:tok]\"after");
    assert_eq!(v["pem"], "[REDACTED:private_key]\ntail");
    assert!(!body(&r).contains("MIIE") && !body(&r).contains("SECRET"));
    assert_eq!(r.get_i64(sc::REDACTION_COUNT), Some(3));
}

#[test]
fn pointers_reach_into_nested_arrays_and_replace_any_value() {
    let red = redactor(
        "jsonPointers: ['/messages/1/content/0/text', '/messages/*/meta', '/system', '/tools/9', '/a~1b']",
    );
    let stats = RedactionStats::default();
    let text = r#"{"system":"be nice","a/b":7,"messages":[
        {"role":"user","content":"hello","meta":{"x":[1,2]}},
        {"role":"user","content":[{"type":"text","text":"private words"},{"type":"text","text":"kept"}],"meta":null}
    ],"system":"dup"}"#;
    let mut r = txn(text);
    red.apply(&mut r, &stats);
    let out = body(&r).to_owned();
    assert!(
        !out.contains("private words") && !out.contains("be nice") && !out.contains("dup"),
        "{out}"
    );
    let v = json(&r);
    assert_eq!(
        v["messages"][1]["content"][0]["text"],
        "[REDACTED:/messages/1/content/0/text]"
    );
    assert_eq!(v["messages"][1]["content"][1]["text"], "kept");
    assert_eq!(v["messages"][0]["meta"], "[REDACTED:/messages/*/meta]");
    assert_eq!(v["messages"][0]["content"], "hello");
    assert_eq!(v["a/b"], "[REDACTED:/a~1b]");
    // Both copies of a duplicated key, the meta of each message, the rest.
    assert_eq!(r.get_i64(sc::REDACTION_COUNT), Some(6));
    // A pointer under a value already replaced is not counted twice.
    let red = redactor("jsonPointers: ['/m', '/m/0']");
    let mut r = txn(r#"{"m":["x"]}"#);
    red.apply(&mut r, &stats);
    assert_eq!(body(&r), r#"{"m":"[REDACTED:/m]"}"#);
    assert_eq!(r.get_i64(sc::REDACTION_COUNT), Some(1));
}

#[test]
fn sse_and_ndjson_bodies_are_redacted_line_by_line() {
    let red = redactor("builtins: [aws_access_key_id]\njsonPointers: ['/delta/text']");
    let stats = RedactionStats::default();
    let mut r = Record::new(sc::KIND_TRANSACTION);
    r.set(
        sc::RESPONSE_BODY,
        "event: content_block_delta\ndata: {\"type\":\"d\",\"delta\":{\"text\":\"secret words\"}}\n\n\
         event: ping\ndata: {\"type\":\"ping\",\"k\":\"AKIAIOSFODNN7EXAMPLE\"}\n\ndata: [DONE]\n\n",
    );
    r.set(sc::RESPONSE_CONTENT_TYPE, "text/event-stream");
    red.apply(&mut r, &stats);
    let out = r.get_str(sc::RESPONSE_BODY).unwrap();
    assert_eq!(
        out,
        "event: content_block_delta\ndata: {\"type\":\"d\",\"delta\":{\"text\":\"[REDACTED:/delta/text]\"}}\n\n\
         event: ping\ndata: {\"type\":\"ping\",\"k\":\"[REDACTED:aws_access_key_id]\"}\n\ndata: [DONE]\n\n"
    );
    assert_eq!(r.get_i64(sc::REDACTION_COUNT), Some(2));
}

#[test]
fn a_body_pointers_cannot_be_applied_to_is_dropped_and_flagged() {
    let red = redactor("builtins: [email]\njsonPointers: ['/messages']");
    let stats = RedactionStats::default();
    // Cut at captureBody.maxBytes: not JSON any more.
    let mut r = txn(r#"{"messages":[{"content":"private"#);
    r.set(sc::RESPONSE_BODY, "{\"ok\":\"bob@example.com\"}");
    red.apply(&mut r, &stats);
    assert_eq!(r.get(sc::REQUEST_BODY), None);
    assert_eq!(
        r.get_str(sc::REQUEST_BODY_REDACTION_DROPPED),
        Some(UNPARSED_JSON)
    );
    assert_eq!(
        r.get_str(sc::RESPONSE_BODY),
        Some("{\"ok\":\"[REDACTED:email]\"}")
    );
    assert_eq!(stats.request_dropped.load(Ordering::Relaxed), 1);
    // Text rules alone redact a cut body as text.
    let red = redactor("builtins: [email]");
    let mut r = txn(r#"{"messages":[{"content":"bob@example.com and more"#);
    red.apply(&mut r, &stats);
    assert_eq!(
        body(&r),
        r#"{"messages":[{"content":"[REDACTED:email] and more"#
    );
    // A body that is not JSON at all has nothing a pointer could name.
    let red = redactor("jsonPointers: ['/messages']");
    let mut r = txn("plain words");
    r.set(sc::REQUEST_CONTENT_TYPE, "text/plain");
    red.apply(&mut r, &stats);
    assert_eq!(body(&r), "plain words");
}

#[test]
fn invalid_utf8_bodies_are_redacted_as_bytes() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let red = redactor(
        "builtins: [aws_access_key_id]\npatterns: [{name: pw, regex: 'pw=(?P<secret>[a-z]+)'}]",
    );
    let stats = RedactionStats::default();
    let mut raw = vec![0xff, 0xfe, b' '];
    raw.extend_from_slice(b"AKIAIOSFODNN7EXAMPLE pw=hunter \x80");
    let mut r = Record::new(sc::KIND_TRANSACTION);
    r.set(sc::RESPONSE_BODY, b64.encode(&raw));
    r.set(sc::RESPONSE_BODY_B64, true);
    red.apply(&mut r, &stats);
    let out = b64.decode(r.get_str(sc::RESPONSE_BODY).unwrap()).unwrap();
    let mut want = vec![0xff, 0xfe, b' '];
    want.extend_from_slice(b"[REDACTED:aws_access_key_id] pw=[REDACTED:pw] \x80");
    assert_eq!(out, want);
    assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(true));
    assert_eq!(r.get_i64(sc::REDACTION_COUNT), Some(2));
    // With pointers, a binary body that claims to be JSON cannot be searched.
    let red = redactor("jsonPointers: ['/x']");
    let mut r = txn(&b64.encode(b"{\"x\":\"\xff\"}"));
    r.set(sc::REQUEST_BODY_B64, true);
    red.apply(&mut r, &stats);
    assert_eq!(r.get(sc::REQUEST_BODY), None);
    assert_eq!(r.get(sc::REQUEST_BODY_B64), None);
    assert_eq!(
        r.get_str(sc::REQUEST_BODY_REDACTION_DROPPED),
        Some(UNPARSED_JSON)
    );
}

#[test]
fn a_secret_group_keeps_the_rest_of_the_match_and_anchors_hold_per_string() {
    let red =
        redactor("builtins: [bearer_token]\npatterns: [{name: whole, regex: '^TOKEN[0-9]+$'}]");
    let stats = RedactionStats::default();
    let mut r = txn(r#"{"h":"Authorization: Bearer abcdefgh.ijk","t":"TOKEN123","u":"xTOKEN1"}"#);
    red.apply(&mut r, &stats);
    let v = json(&r);
    assert_eq!(v["h"], "Authorization: Bearer [REDACTED:bearer_token]");
    assert_eq!(v["t"], "[REDACTED:whole]", "anchored to the JSON string");
    assert_eq!(v["u"], "xTOKEN1");
    // Plain text: matched as text, across lines.
    let red = redactor("builtins: [private_key]");
    let mut r = txn("key:\n-----BEGIN EC PRIVATE KEY-----\nAAAA\nBBBB");
    r.set(sc::REQUEST_CONTENT_TYPE, "text/plain");
    red.apply(&mut r, &stats);
    assert_eq!(
        body(&r),
        "key:\n[REDACTED:private_key]",
        "cut off: to the end"
    );
}

/// In line-structured bodies a line that starts like JSON and does not
/// parse drops the body only when it may be a cut one (the last line of a
/// truncated body); a declared non-JSON type has nothing to point into.
#[test]
fn only_a_cut_last_line_drops_a_line_structured_body() {
    let red = redactor("jsonPointers: ['/delta/text']");
    let stats = RedactionStats::default();
    let sse = "data: {\"delta\":{\"text\":\"a\"}}\n\ndata: [REDACTED:x] not json\n\ndata: {\"delta\":{\"text\":\"cut";
    let rec = |truncated: bool, ct: &str| {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::RESPONSE_BODY, sse);
        r.set(sc::RESPONSE_CONTENT_TYPE, ct);
        r.set(sc::RESP_TRUNCATED, truncated);
        r
    };
    let mut r = rec(false, "text/event-stream");
    red.apply(&mut r, &stats);
    assert_eq!(
        r.get_str(sc::RESPONSE_BODY),
        Some(
            "data: {\"delta\":{\"text\":\"[REDACTED:/delta/text]\"}}\n\ndata: [REDACTED:x] not json\n\ndata: {\"delta\":{\"text\":\"cut"
        )
    );
    let mut r = rec(true, "text/event-stream");
    red.apply(&mut r, &stats);
    assert_eq!(r.get(sc::RESPONSE_BODY), None);
    assert_eq!(
        r.get_str(sc::RESPONSE_BODY_REDACTION_DROPPED),
        Some(UNPARSED_JSON)
    );
    let mut r = rec(true, "text/plain");
    red.apply(&mut r, &stats);
    assert_eq!(r.get_str(sc::RESPONSE_BODY), Some(sse));
    // NDJSON: each line a document.
    let mut r = rec(false, "application/x-ndjson");
    r.set(
        sc::RESPONSE_BODY,
        "{\"delta\":{\"text\":\"a\"}}\n{\"delta\":{\"text\":\"b\"}}\n",
    );
    red.apply(&mut r, &stats);
    assert_eq!(r.get_i64(sc::REDACTION_COUNT), Some(2));
}
