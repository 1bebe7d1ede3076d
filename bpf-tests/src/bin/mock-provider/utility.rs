//! Utility endpoints.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::shared::{json_response, pattern_response, query_param, respond, PatternBody};
use crate::sse::ChannelBody;
use crate::{BoxError, RespBody, MAX_GENERATED_BODY};

fn parse_size(n: &str) -> Option<u64> {
    n.parse::<u64>().ok().filter(|v| *v <= MAX_GENERATED_BODY)
}

fn bad_size() -> Response<RespBody> {
    respond(
        StatusCode::BAD_REQUEST,
        "text/plain",
        format!("size must be an integer between 0 and {MAX_GENERATED_BODY}\n"),
    )
}

pub(crate) fn bytes_endpoint(n: &str) -> Response<RespBody> {
    match parse_size(n) {
        Some(n) => pattern_response(
            "application/octet-stream",
            PatternBody {
                prefix: None,
                fill: n,
                suffix: None,
            },
        ),
        None => bad_size(),
    }
}

/// An n-byte JSON document: `{"data":"xxx…"}` (n ≥ 11), a string (n ≥ 2),
/// or `0` (n = 1).
pub(crate) fn json_endpoint(n: &str) -> Response<RespBody> {
    let n = match parse_size(n) {
        Some(0) => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "no JSON document has 0 bytes\n",
            )
        }
        Some(n) => n,
        None => return bad_size(),
    };
    let body = match n {
        1 => PatternBody {
            prefix: Some(Bytes::from_static(b"0")),
            fill: 0,
            suffix: None,
        },
        2..=10 => PatternBody {
            prefix: Some(Bytes::from_static(b"\"")),
            fill: n - 2,
            suffix: Some(Bytes::from_static(b"\"")),
        },
        _ => PatternBody {
            prefix: Some(Bytes::from_static(b"{\"data\":\"")),
            fill: n - 11,
            suffix: Some(Bytes::from_static(b"\"}")),
        },
    };
    pattern_response("application/json", body)
}

pub(crate) fn sse_endpoint(n: &str, query: Option<&str>) -> Response<RespBody> {
    let n = match n.parse::<u64>() {
        Ok(n) if n <= 10_000_000 => n,
        _ => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "event count must be an integer up to 10000000\n",
            )
        }
    };
    let interval = query_param(query, "interval_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::ZERO);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            let event = format!("id: {i}\nevent: tick\ndata: {{\"seq\":{i},\"of\":{n}}}\n\n");
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /headers`: the request headers as received (name → value), so tests
/// can check what a proxy added or removed.
pub(crate) fn headers_endpoint(req: &Request<Incoming>) -> Response<RespBody> {
    let mut map = serde_json::Map::new();
    for (name, value) in req.headers() {
        map.insert(
            name.as_str().to_owned(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    json_response(StatusCode::OK, &Value::Object(map))
}

pub(crate) fn echo_endpoint(req: Request<Incoming>) -> Response<RespBody> {
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let content_length = req.headers().get(CONTENT_LENGTH).cloned();
    let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Some(len) = content_length {
        resp.headers_mut().insert(CONTENT_LENGTH, len);
    }
    resp
}
