//! `redact`: the `redaction` rules (`egret::redact::Redactor`) over an
//! arbitrary body — the recorder runs them on every captured body, which
//! the sandbox and the provider control.
//!
//! Layout: one control byte — bit 0: the body is base64 (as the proxy
//! writes a body that is not UTF-8), bits 1–2: its content type
//! (`application/json`, `text/event-stream`, `text/plain`, none), bit 3:
//! the request (else the response), bit 4: the body is flagged truncated
//! — then the body bytes (as text when
//! UTF-8; base64-encoded when bit 0 is set or they are not UTF-8).
//!
//! Rules: every builtin, an operator pattern with a `secret` group and an
//! anchored one, and JSON pointers with `*` and an array index.
//!
//! Invariants: never panics; a body that was one valid JSON text stays one
//! (a replacement never breaks an escape or the structure); a base64 body
//! stays valid base64; a body is either kept or dropped with
//! `*.body_redaction_dropped` (and then its base64 flag is gone too); the
//! count is present exactly when some rule fired, and equals the sum the
//! metrics counted; a second pass over what the first left finds nothing
//! to drop.
use base64::Engine;
use egret::{
    config::RedactionConfig,
    record::Record,
    redact::{RedactionStats, Redactor},
    semconv as sc,
};

use crate::input::Reader;

const RULES: &str = "builtins: [anthropic_api_key, openai_api_key, aws_access_key_id, github_token, google_api_key, bearer_token, jwt, private_key, email]\n\
patterns:\n- {name: pw, regex: 'pw=(?P<secret>[a-z0-9]+)'}\n- {name: whole, regex: '^TOKEN[0-9]+$'}\n\
jsonPointers: ['/messages/*/content', '/a/0', '/metadata/user_id']\n";

fn redactor() -> &'static Redactor {
    static R: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let cfg: RedactionConfig = serde_norway::from_str(RULES).expect("rules parse");
        Redactor::new(&cfg).expect("rules compile")
    })
}

pub fn redact(data: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut r = Reader::new(data);
    let ctl = r.byte();
    let body = r.rest();
    let (key, b64_key, ct_key, dropped_key, truncated_key) = if ctl & 8 != 0 {
        (
            sc::REQUEST_BODY,
            sc::REQUEST_BODY_B64,
            sc::REQUEST_CONTENT_TYPE,
            sc::REQUEST_BODY_REDACTION_DROPPED,
            sc::REQ_TRUNCATED,
        )
    } else {
        (
            sc::RESPONSE_BODY,
            sc::RESPONSE_BODY_B64,
            sc::RESPONSE_CONTENT_TYPE,
            sc::RESPONSE_BODY_REDACTION_DROPPED,
            sc::RESP_TRUNCATED,
        )
    };
    let truncated = ctl & 16 != 0;
    let mut rec = Record::new(sc::KIND_TRANSACTION);
    rec.set(truncated_key, truncated);
    let text = std::str::from_utf8(body).ok().filter(|_| ctl & 1 == 0);
    let was_json = text.is_some_and(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok());
    match text {
        Some(t) => rec.set(key, t),
        None => {
            rec.set(key, b64.encode(body));
            rec.set(b64_key, true);
        }
    }
    match (ctl >> 1) & 3 {
        0 => rec.set(ct_key, "application/json"),
        1 => rec.set(ct_key, "text/event-stream"),
        2 => rec.set(ct_key, "text/plain"),
        _ => {}
    }
    let stats = RedactionStats::default();
    redactor().apply(&mut rec, &stats);
    let count = rec.get_i64(sc::REDACTION_COUNT);
    let counted: u64 = stats.by_rule().values().sum();
    assert_eq!(count.unwrap_or(0), counted as i64, "record and metrics agree");
    assert!(count != Some(0), "a count of 0 is never written");
    assert_eq!(
        count.is_some(),
        rec.get(sc::REDACTION_RULES).is_some(),
        "count and rules go together"
    );
    match rec.get_str(key) {
        None => {
            assert!(rec.get_str(dropped_key).is_some(), "a body gone without a reason");
            assert!(rec.get(b64_key).is_none(), "the flag of a dropped body stays");
        }
        Some(out) => {
            assert!(rec.get(dropped_key).is_none());
            if text.is_none() {
                b64.decode(out).expect("base64 stays base64");
            } else if was_json {
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(out) {
                    panic!("valid JSON in, invalid out ({e}): {out:?}");
                }
            }
            // What the first pass kept, a second pass keeps too.
            // (Without a content type the body's first byte decides, and a
            // replacement starts with `[`: the first pass can change it.)
            if !truncated && (ctl >> 1) & 3 != 3 {
                let mut again = rec.clone();
                redactor().apply(&mut again, &RedactionStats::default());
                assert!(again.get_str(key).is_some(), "second pass dropped {out:?}");
            }
        }
    }
}
