//! Streamed bodies: a channel-fed body and SSE framing.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::Response;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{BoxError, RespBody};

/// A body fed by a task through a channel: each message is one frame, so
/// stream chunks reach the wire as they are produced.
pub(crate) struct ChannelBody {
    pub(crate) rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Streams `chunks` with `delay` between them.
pub(crate) fn stream_response(
    content_type: &str,
    chunks: Vec<Bytes>,
    delay: Duration,
) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for (i, chunk) in chunks.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(chunk).await.is_err() {
                return; // client went away
            }
        }
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(CONTENT_TYPE, v);
    }
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) fn sse_response(chunks: Vec<Bytes>, delay: Duration) -> Response<RespBody> {
    stream_response("text/event-stream; charset=utf-8", chunks, delay)
}

/// `event: NAME` + `data: JSON` + blank line.
pub(crate) fn sse_event(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// A bare `data: JSON` event.
pub(crate) fn sse_data(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}
