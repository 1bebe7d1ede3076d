//! Shared state, bodies and small helpers.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::{BoxError, RespBody};

pub(crate) struct State {
    /// Live MCP session ids.
    pub(crate) sessions: Mutex<HashSet<String>>,
    /// Open legacy HTTP+SSE MCP streams.
    pub(crate) legacy: crate::mcp_sse::Sessions,
    pub(crate) counter: AtomicU64,
    pub(crate) seed: u64,
    pub(crate) stream_delay: Duration,
}

impl State {
    /// A unique, provider-looking id: `prefix` + 24 base62 characters.
    pub(crate) fn id(&self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut x = self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut out = String::with_capacity(prefix.len() + 24);
        out.push_str(prefix);
        for _ in 0..24 {
            x = splitmix64(x);
            out.push(ALPHABET[(x % 62) as usize] as char);
        }
        out
    }
}

pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<RespBody> {
    let body = body.into();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<RespBody> {
    respond(status, "application/json", value.to_string())
}

static FILL: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// prefix + `fill` bytes of 'x' + suffix, generated on the fly with an exact
/// size hint (so large bodies never sit in memory).
pub(crate) struct PatternBody {
    pub(crate) prefix: Option<Bytes>,
    pub(crate) fill: u64,
    pub(crate) suffix: Option<Bytes>,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if self.fill > 0 {
            let n = self.fill.min(FILL.len() as u64) as usize;
            self.fill -= n as u64;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))));
        }
        Poll::Ready(self.suffix.take().map(|s| Ok(Frame::data(s))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.fill == 0 && self.suffix.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.prefix.as_ref().map_or(0, |b| b.len() as u64)
            + self.fill
            + self.suffix.as_ref().map_or(0, |b| b.len() as u64);
        SizeHint::with_exact(len)
    }
}

pub(crate) fn pattern_response(
    content_type: &'static str,
    body: PatternBody,
) -> Response<RespBody> {
    let len = body.size_hint().exact().unwrap_or(0);
    let mut resp = Response::new(body.boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn header_u64(req_headers: &http::HeaderMap, name: &str) -> Option<u64> {
    req_headers.get(name)?.to_str().ok()?.trim().parse().ok()
}
