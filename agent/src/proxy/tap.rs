//! Body taps and the transaction they complete.
//!
//! Bodies are forwarded frame by frame as they arrive; the taps look at each
//! frame on its way (bounded capture, incremental provider parsing) and
//! never hold one back. The response tap owns the transaction and writes
//! its record exactly once: when the body ends, fails, or is dropped
//! because the client went away.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use base64::Engine;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::{
    genai::{Exchange, UsageChunkFilter},
    record::{now_unix_nanos, Record},
    semconv as sc,
};

/// Bounded copy of one direction's body.
#[derive(Debug, Default)]
pub struct Capture {
    buf: Vec<u8>,
    max: usize,
    enabled: bool,
    /// All body bytes seen, captured or not.
    pub total: u64,
}

impl Capture {
    pub fn new(max: usize, enabled: bool) -> Capture {
        Capture {
            buf: Vec::new(),
            max,
            enabled,
            total: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if self.enabled && self.buf.len() < self.max {
            let take = data.len().min(self.max - self.buf.len());
            self.buf.extend_from_slice(&data[..take]);
        }
    }

    pub fn truncated(&self) -> bool {
        self.enabled && self.total > self.buf.len() as u64
    }

    /// Writes the captured body: UTF-8 as is, anything else base64.
    pub fn write(&self, rec: &mut Record, body_key: &'static str, truncated_key: &'static str) {
        rec.set(truncated_key, self.truncated());
        if !self.enabled || self.buf.is_empty() {
            return;
        }
        match std::str::from_utf8(&self.buf) {
            Ok(s) => rec.set(body_key, s),
            Err(e) if self.truncated() && e.error_len().is_none() => {
                // Cut inside a multi-byte character: keep the valid prefix.
                let valid = &self.buf[..e.valid_up_to()];
                rec.set(body_key, String::from_utf8_lossy(valid).into_owned());
            }
            Err(_) => {
                rec.set(
                    body_key,
                    base64::engine::general_purpose::STANDARD.encode(&self.buf),
                );
                rec.set(sc::BODY_B64, true);
            }
        }
    }
}

/// Whether a content type's body is captured.
pub fn capturable(content_type: Option<&str>, include: &[String]) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let media = ct.split(';').next().unwrap_or("").trim();
    include.iter().any(|i| i.eq_ignore_ascii_case(media))
}

/// What a finished transaction must do with its record.
pub trait Finisher: Send + Sync {
    fn finish(&self, txn: Transaction);
}

/// One HTTP exchange in flight.
pub struct Transaction {
    pub rec: Record,
    pub exchange: Exchange,
    pub started: Instant,
    pub first_byte: Option<Instant>,
    pub request: Arc<Mutex<Capture>>,
    pub response: Capture,
    /// Set when the response did not end cleanly.
    pub error: Option<&'static str>,
    pub finisher: Arc<dyn Finisher>,
}

impl Transaction {
    /// Writes the common end-of-exchange attributes into the record.
    pub fn seal(&mut self) {
        let now = Instant::now();
        self.rec.set(sc::END_TIME, now_unix_nanos());
        self.rec.set(
            sc::DURATION_MS,
            now.duration_since(self.started).as_secs_f64() * 1e3,
        );
        if let Some(t) = self.first_byte {
            self.rec.set(
                sc::TTFB_MS,
                t.duration_since(self.started).as_secs_f64() * 1e3,
            );
        }
        self.exchange.finish(&mut self.rec);
        {
            let req = self.request.lock().unwrap_or_else(|p| p.into_inner());
            self.rec.set(sc::REQ_BYTES, req.total);
            req.write(&mut self.rec, sc::REQUEST_BODY, sc::REQ_TRUNCATED);
        }
        self.rec.set(sc::RESP_BYTES, self.response.total);
        self.response
            .write(&mut self.rec, sc::RESPONSE_BODY, sc::RESP_TRUNCATED);
        let req_trunc = self.rec.get_bool(sc::REQ_TRUNCATED).unwrap_or(false);
        self.rec
            .set(sc::BODY_TRUNCATED, req_trunc || self.response.truncated());
        let captured = self.rec.get_str(sc::REQUEST_BODY).map_or(0, str::len)
            + self.rec.get_str(sc::RESPONSE_BODY).map_or(0, str::len);
        self.rec.set(sc::BODY_BYTES, captured as u64);
        if let Some(e) = self.error {
            if self.rec.get(sc::ERROR_TYPE).is_none() {
                self.rec.set(sc::ERROR_TYPE, e);
            }
        }
    }
}

/// The response body on its way to the sandbox.
pub struct ResponseTap<B: Body> {
    inner: B,
    /// A frame read by [`ResponseTap::prefetch`], handed out first.
    prefetched: Option<Option<Result<Frame<Bytes>, B::Error>>>,
    txn: Option<Box<Transaction>>,
    filter: Option<UsageChunkFilter>,
    scratch: Vec<u8>,
}

impl<B: Body> ResponseTap<B> {
    pub fn new(inner: B, mut txn: Box<Transaction>) -> ResponseTap<B> {
        let filter = txn.exchange.usage_filter();
        ResponseTap {
            inner,
            prefetched: None,
            txn: Some(txn),
            filter,
            scratch: Vec::new(),
        }
    }

    /// Reads the first frame if it is already on its way, so the response
    /// head and a small body leave in one write (one TLS record, one
    /// segment) instead of the head alone followed by the body. hyper's
    /// client only decodes body bytes once the body is polled, so one poll,
    /// one yield (the connection task runs) and a second poll; a body that
    /// is not there yet (a stream still thinking) is not waited for.
    pub async fn prefetch(&mut self)
    where
        B: Body<Data = Bytes> + Unpin,
    {
        for attempt in 0..2 {
            let polled = std::future::poll_fn(|cx| {
                Poll::Ready(match Pin::new(&mut self.inner).poll_frame(cx) {
                    Poll::Ready(f) => Some(f),
                    Poll::Pending => None,
                })
            })
            .await;
            if let Some(f) = polled {
                self.prefetched = Some(f);
                return;
            }
            if attempt == 0 {
                tokio::task::yield_now().await;
            }
        }
    }

    /// The prefetched frame if any, else the inner body's next.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        match self.prefetched.take() {
            Some(f) => Poll::Ready(f),
            None => Pin::new(&mut self.inner).poll_frame(cx),
        }
    }

    /// True when the client sees different bytes than upstream sent.
    pub fn rewrites_body(&self) -> bool {
        self.filter.is_some()
    }

    fn end(&mut self, error: Option<&'static str>) {
        let error =
            if self.prefetched.is_none() && self.filter.is_none() && self.inner.is_end_stream() {
                None
            } else {
                error
            };
        if let Some(mut txn) = self.txn.take() {
            if txn.error.is_none() {
                txn.error = error;
            }
            let fin = txn.finisher.clone();
            fin.finish(*txn);
        }
    }
}

impl<B> Body for ResponseTap<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            let this = &mut *self;
            match this.poll_inner(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    if let Some(f) = this.filter.as_mut() {
                        this.scratch.clear();
                        f.finish(&mut this.scratch);
                        this.filter = None;
                        if !this.scratch.is_empty() {
                            let out = Bytes::from(std::mem::take(&mut this.scratch));
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    this.end(None);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.end(Some("upstream_body_error"));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    };
                    if let Some(txn) = this.txn.as_mut() {
                        if txn.first_byte.is_none() {
                            txn.first_byte = Some(Instant::now());
                        }
                        txn.exchange.on_response_chunk(&frame);
                        txn.response.push(&frame);
                    }
                    let Some(f) = this.filter.as_mut() else {
                        if this.inner.is_end_stream() {
                            // hyper stops polling once Content-Length is met.
                            this.end(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(frame))));
                    };
                    this.scratch.clear();
                    f.push(&frame, &mut this.scratch);
                    if this.scratch.is_empty() {
                        // Everything held back (or removed): read on.
                        continue;
                    }
                    let out = Bytes::from(std::mem::take(&mut this.scratch));
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefetched.is_none()
            && self.txn.is_none()
            && self.filter.is_none()
            && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.filter.is_some() {
            return SizeHint::default();
        }
        let ahead = match &self.prefetched {
            Some(Some(Ok(f))) => f.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        let inner = self.inner.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + ahead);
        if let Some(u) = inner.upper() {
            h.set_upper(u + ahead);
        }
        h
    }
}

// No field is structurally pinned: the inner body is polled through
// `Pin::new(&mut inner)`, which needs `B: Unpin` anyway.
impl<B: Body> Unpin for ResponseTap<B> {}

impl<B: Body> Drop for ResponseTap<B> {
    fn drop(&mut self) {
        // Dropped before the end (and not because the body was complete):
        // the sandbox went away mid-response.
        self.end(Some("client_aborted"));
    }
}

/// A streamed request body on its way upstream, captured up to the limit.
pub struct RequestTap<B> {
    inner: B,
    capture: Arc<Mutex<Capture>>,
}

impl<B> RequestTap<B> {
    pub fn new(inner: B, capture: Arc<Mutex<Capture>>) -> RequestTap<B> {
        RequestTap { inner, capture }
    }
}

impl<B> Body for RequestTap<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if let Some(d) = frame.data_ref() {
                self.capture
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(d);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_is_bounded_and_flags_truncation() {
        let mut c = Capture::new(4, true);
        c.push(b"ab");
        c.push(b"cdef");
        assert_eq!(c.total, 6);
        assert!(c.truncated());
        let mut r = Record::new("transaction");
        c.write(&mut r, sc::RESPONSE_BODY, sc::RESP_TRUNCATED);
        assert_eq!(r.get_str(sc::RESPONSE_BODY), Some("abcd"));
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(true));
        let mut bin = Capture::new(8, true);
        bin.push(&[0xff, 0xfe, 0x00]);
        let mut r = Record::new("transaction");
        bin.write(&mut r, sc::RESPONSE_BODY, sc::RESP_TRUNCATED);
        assert_eq!(r.get_bool(sc::BODY_B64), Some(true));
    }

    #[test]
    fn content_types_match_without_parameters() {
        let inc = vec![
            "application/json".to_owned(),
            "text/event-stream".to_owned(),
        ];
        assert!(capturable(Some("application/json; charset=utf-8"), &inc));
        assert!(capturable(Some("Text/Event-Stream"), &inc));
        assert!(!capturable(Some("image/png"), &inc));
        assert!(!capturable(None, &inc));
    }
}
