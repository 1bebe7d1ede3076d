//! AWS Bedrock through egret with the official clients: `boto3`
//! (Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream)
//! and the Anthropic SDK's `AnthropicBedrock` (messages.create and
//! messages.stream), in a sandbox, against the stand-in, which verifies
//! every request's SigV4 signature (so a call that succeeds was forwarded
//! byte for byte: body, path and signed headers).
//!
//! For every call the record's provider, operation, request model, stream
//! flag, finish reasons and usage equal what the stand-in sent and what the
//! SDK parsed, with no parse error.
use bpf_tests::{world::*, *};
use egret::{record::Record, semconv as sc};
use serde_json::Value;

const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";

fn i(r: &Record, key: &str) -> Option<i64> {
    r.get_i64(key)
}

fn dump(recs: &[&Record]) -> String {
    recs.iter()
        .map(|r| r.to_json_line())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one record whose path ends with `/{op}`, for `model`, with `status`.
fn find<'a>(recs: &[&'a Record], model: &str, op: &str, status: i64) -> &'a Record {
    let hits: Vec<&Record> = recs
        .iter()
        .copied()
        .filter(|r| {
            r.get_str(sc::URL_PATH)
                .is_some_and(|p| p.ends_with(&format!("/{op}")))
                && r.get_str(sc::GEN_AI_REQUEST_MODEL) == Some(model)
                && r.get_i64(sc::HTTP_RESPONSE_STATUS_CODE) == Some(status)
        })
        .collect();
    assert_eq!(hits.len(), 1, "{op} {model} {status}:\n{}", dump(recs));
    hits[0]
}

fn reasons(r: &Record) -> Vec<String> {
    match r.get(sc::GEN_AI_RESPONSE_FINISH_REASONS) {
        Some(egret::record::AttrValue::StrArray(v)) => v.clone(),
        other => panic!("finish reasons {other:?} in {}", r.to_json_line()),
    }
}

fn n(v: &Value) -> Option<i64> {
    v.as_i64()
}

/// What every parsed Bedrock record shares.
fn common(r: &Record, call: &Value, operation: Option<&str>) {
    let line = r.to_json_line();
    assert_eq!(
        r.get_str(sc::GEN_AI_PROVIDER_NAME),
        Some("aws.bedrock"),
        "{line}"
    );
    assert_eq!(r.get_str(sc::GEN_AI_SYSTEM), Some("aws.bedrock"), "{line}");
    assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), operation, "{line}");
    assert_eq!(
        r.get_str(sc::GEN_AI_REQUEST_MODEL),
        call["model"].as_str(),
        "{line}"
    );
    assert_eq!(
        r.get_bool(sc::GEN_AI_REQUEST_STREAM),
        call["stream"].as_bool(),
        "{line}"
    );
    assert_eq!(r.get(sc::PARSE_ERROR), None, "{line}");
    assert_eq!(r.get(sc::BODY_REQUEST_REWRITTEN), None, "{line}");
    assert_eq!(r.get(sc::ERROR_TYPE), None, "{line}");
    assert_eq!(r.get_str(sc::SERVER_ADDRESS), Some(HOST), "{line}");
}

/// A Converse / ConverseStream record against what boto3 parsed.
fn converse(r: &Record, call: &Value) {
    common(r, call, Some("chat"));
    let u = &call["usage"];
    let read = n(&u["cache_read_input_tokens"]);
    let write = n(&u["cache_write_input_tokens"]);
    let line = r.to_json_line();
    // input = inputTokens + cache read + cache write (module docs).
    let input = n(&u["input_tokens"]).unwrap() + read.unwrap_or(0) + write.unwrap_or(0);
    assert_eq!(i(r, sc::GEN_AI_USAGE_INPUT_TOKENS), Some(input), "{line}");
    assert_eq!(
        i(r, sc::GEN_AI_USAGE_OUTPUT_TOKENS),
        n(&u["output_tokens"]),
        "{line}"
    );
    assert_eq!(
        i(r, sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        read,
        "{line}"
    );
    assert_eq!(
        i(r, sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        write,
        "{line}"
    );
    assert_eq!(
        i(r, sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS),
        write,
        "{line}"
    );
    // totalTokens counts the cached tokens once: the same total.
    assert_eq!(
        Some(input + n(&u["output_tokens"]).unwrap()),
        n(&u["total_tokens"]),
        "{line}"
    );
    assert_eq!(
        reasons(r),
        [call["stop_reason"].as_str().unwrap()],
        "{line}"
    );
    assert_eq!(r.get(sc::GEN_AI_RESPONSE_MODEL), None, "{line}");
    assert_eq!(r.get(sc::GEN_AI_RESPONSE_ID), None, "{line}");
}

/// An Anthropic-on-Bedrock invoke record against what the SDK parsed.
fn invoke(r: &Record, call: &Value) {
    common(r, call, Some("chat"));
    let u = &call["usage"];
    let line = r.to_json_line();
    let read = n(&u["cache_read_input_tokens"]).unwrap_or(0);
    let created = n(&u["cache_creation_input_tokens"]).unwrap_or(0);
    let input = n(&u["input_tokens"]).unwrap() + read + created;
    assert_eq!(i(r, sc::GEN_AI_USAGE_INPUT_TOKENS), Some(input), "{line}");
    assert_eq!(
        i(r, sc::GEN_AI_USAGE_OUTPUT_TOKENS),
        n(&u["output_tokens"]),
        "{line}"
    );
    assert_eq!(
        reasons(r),
        [call["stop_reason"].as_str().unwrap()],
        "{line}"
    );
    assert_eq!(
        r.get_str(sc::GEN_AI_RESPONSE_ID),
        call["id"].as_str(),
        "{line}"
    );
    assert_eq!(
        r.get_str(sc::GEN_AI_RESPONSE_MODEL),
        call["response_model"].as_str(),
        "{line}"
    );
}

#[test]
fn boto3_and_anthropic_bedrock_through_egret() {
    if !require_privileges("bedrock") || !require_venv("bedrock") {
        return;
    }
    let w = World::start(&format!(
        "gateways:\n- name: providers\n  routes:\n  - {{name: bedrock, hosts: [{HOST}], provider: bedrock}}\n"
    ));
    let inv = unique("inv-bedrock-");
    let cg = w.sandbox(&inv, None);
    let calls = w.sdk(&cg, "bedrock_client.py");
    assert!(calls.iter().all(|c| c["ok"] == true), "{calls:?}");
    let call = |name: &str| -> &Value {
        calls
            .iter()
            .find(|c| c["call"] == name)
            .unwrap_or_else(|| panic!("no {name} in {calls:?}"))
    };
    assert_eq!(calls.len(), 8, "{calls:?}");
    let recs = w.transactions(&inv, calls.len());
    let recs: Vec<&Record> = recs.iter().collect();
    assert_eq!(recs.len(), calls.len(), "{}", dump(&recs));

    // boto3 Converse: the system prompt's cachePoint makes the stand-in
    // report cache reads, so the cache mapping is exercised.
    let c = call("converse");
    assert!(
        n(&c["usage"]["cache_read_input_tokens"]).unwrap() > 0,
        "{c}"
    );
    let model = c["model"].as_str().unwrap();
    converse(find(&recs, model, "converse", 200), c);

    let c = call("converse_stream");
    assert_eq!(c["stop_reason"], "max_tokens", "{c}");
    assert_eq!(c["events"].as_array().unwrap().last().unwrap(), "metadata");
    let r = find(&recs, model, "converse-stream", 200);
    converse(r, c);
    assert_eq!(
        r.get_str(sc::RESPONSE_CONTENT_TYPE),
        Some("application/vnd.amazon.eventstream"),
        "{}",
        r.to_json_line()
    );

    let c = call("invoke_model");
    invoke(find(&recs, model, "invoke", 200), c);
    // Bedrock's own count headers agree with the Anthropic body.
    assert_eq!(c["bedrock_input_tokens"], c["usage"]["input_tokens"]);
    assert_eq!(c["bedrock_output_tokens"], c["usage"]["output_tokens"]);

    let c = call("invoke_model_with_response_stream");
    assert_eq!(c["stop_reason"], "max_tokens", "{c}");
    assert_eq!(
        c["invocation_metrics"]["outputTokenCount"],
        c["usage"]["output_tokens"]
    );
    invoke(find(&recs, model, "invoke-with-response-stream", 200), c);

    // The body changed after signing was refused: the check is live, so
    // the 200s above prove egret forwarded the signed requests unchanged.
    let c = call("converse_tampered");
    assert_eq!(c["status"], 403, "{c}");
    assert_eq!(c["error_code"], "InvalidSignatureException", "{c}");
    let r = find(&recs, model, "converse", 403);
    assert_eq!(
        r.get_str(sc::ERROR_TYPE),
        Some("InvalidSignatureException"),
        "{}",
        r.to_json_line()
    );
    assert_eq!(r.get(sc::PARSE_ERROR), None, "{}", r.to_json_line());
    assert_eq!(r.get(sc::GEN_AI_USAGE_INPUT_TOKENS), None);

    // A signed `traceparent` reaches the stand-in as the client signed it
    // (egret otherwise sets its own): the call succeeded, and the record
    // is a normal one.
    let c = call("converse_signed_traceparent");
    converse(
        find(&recs, c["model"].as_str().unwrap(), "converse", 200),
        c,
    );

    // AnthropicBedrock: an inference profile id, `:` left unencoded.
    let c = call("anthropic_bedrock_messages");
    let a_model = c["model"].as_str().unwrap();
    assert!(a_model.starts_with("us.anthropic."), "{c}");
    invoke(find(&recs, a_model, "invoke", 200), c);
    let c = call("anthropic_bedrock_messages_stream");
    invoke(find(&recs, a_model, "invoke-with-response-stream", 200), c);
}
