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
    genai::{decode::Decoder, Encoding, Exchange, UsageChunkFilter},
    record::{now_unix_nanos, ChunkGaps, Record},
    semconv as sc,
};

/// Where one direction's body attributes go.
#[derive(Debug, Clone, Copy)]
pub struct BodyKeys {
    pub body: &'static str,
    pub truncated: &'static str,
    pub b64: &'static str,
    pub content_encoding: &'static str,
    pub decode_error: &'static str,
}

/// The request body's attributes.
pub const REQUEST_KEYS: BodyKeys = BodyKeys {
    body: sc::REQUEST_BODY,
    truncated: sc::REQ_TRUNCATED,
    b64: sc::REQUEST_BODY_B64,
    content_encoding: sc::REQUEST_CONTENT_ENCODING,
    decode_error: sc::REQUEST_BODY_DECODE_ERROR,
};

/// The response body's attributes.
pub const RESPONSE_KEYS: BodyKeys = BodyKeys {
    body: sc::RESPONSE_BODY,
    truncated: sc::RESP_TRUNCATED,
    b64: sc::RESPONSE_BODY_B64,
    content_encoding: sc::RESPONSE_CONTENT_ENCODING,
    decode_error: sc::RESPONSE_BODY_DECODE_ERROR,
};

/// Why a content-encoded body is not kept decoded (whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A `Content-Encoding` egret does not decode (stacked, unknown): the
    /// wire bytes are kept.
    #[error("unsupported_content_encoding")]
    Unsupported,
    /// The encoded data is corrupt: the wire bytes are kept.
    #[error("decode_failed")]
    Failed,
    /// The encoded stream ended before its end (cut short, or a bad
    /// checksum): the decoded prefix is kept and marked truncated.
    #[error("incomplete")]
    Incomplete,
}

impl DecodeError {
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeError::Unsupported => "unsupported_content_encoding",
            DecodeError::Failed => "decode_failed",
            DecodeError::Incomplete => "incomplete",
        }
    }
}

/// Bytes kept up to `max`; never allocates past `max`. As a decoder's
/// sink it refuses (an error, which stops the decoder) past `max`.
#[derive(Debug, Default)]
struct Kept {
    buf: Vec<u8>,
    max: usize,
    /// Bytes were offered past `max`.
    full: bool,
}

impl Kept {
    fn new(max: usize) -> Kept {
        Kept {
            buf: Vec::new(),
            max,
            full: false,
        }
    }

    /// Keeps what fits; false when some of `data` did not.
    fn keep(&mut self, data: &[u8]) -> bool {
        let take = data.len().min(self.max - self.buf.len());
        if take > 0 {
            let want = self.buf.len() + take;
            if want > self.buf.capacity() {
                // Grow geometrically, but never past the cap.
                let target = (self.buf.capacity() * 2).max(want).max(256).min(self.max);
                self.buf.reserve_exact(target - self.buf.len());
            }
            self.buf.extend_from_slice(&data[..take]);
        }
        if take < data.len() {
            self.full = true;
        }
        !self.full
    }
}

impl std::io::Write for Kept {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.keep(data) {
            Ok(data.len())
        } else {
            Err(std::io::Error::other("capture cap reached"))
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a capture holds.
#[derive(Debug)]
enum Kind {
    /// Identity body: the wire bytes.
    Plain(Kept),
    /// Decoding as frames pass: decoded bytes in the decoder's sink; the
    /// wire bytes (up to the cap too) in `raw`, for a failure.
    Decoding { dec: Box<Decoder<Kept>>, raw: Kept },
    /// Decoded, stopped at the cap, or ended early (`error`).
    Decoded {
        kept: Kept,
        error: Option<DecodeError>,
    },
    /// Not decodable: the wire bytes.
    Raw { raw: Kept, error: DecodeError },
}

impl Default for Kind {
    fn default() -> Self {
        Kind::Plain(Kept::default())
    }
}

/// Bounded copy of one direction's body: decoded when it is
/// content-encoded, with the cap applied to the decoded size. Decoding
/// happens as frames pass and stops at the cap (the decoder is dropped
/// then), so a compression bomb costs at most the cap in output, plus the
/// codec's own window (gzip/deflate 32 KiB, zstd at most 8 MiB, br at most
/// 16 MiB, as the stream declares).
#[derive(Debug, Default)]
pub struct Capture {
    kind: Kind,
    enabled: bool,
    /// The `Content-Encoding` value, when not identity.
    encoding: Option<String>,
    /// All body bytes seen on the wire, captured or not.
    pub total: u64,
}

impl Capture {
    pub fn new(max: usize, enabled: bool) -> Capture {
        Capture {
            kind: Kind::Plain(Kept::new(max)),
            enabled,
            encoding: None,
            total: 0,
        }
    }

    /// The body's `Content-Encoding` header (before any byte is pushed):
    /// the capture then keeps the decoded body.
    pub fn with_content_encoding(mut self, value: Option<&str>) -> Capture {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return self;
        };
        if v.eq_ignore_ascii_case("identity") {
            return self;
        }
        self.encoding = Some(v.to_ascii_lowercase());
        let Kind::Plain(k) = &self.kind else {
            return self;
        };
        let max = k.max;
        if !self.enabled || self.total > 0 {
            return self;
        }
        self.kind = match Encoding::from_header(Some(v)) {
            Some(Encoding::Identity) => return self,
            Some(enc) => Kind::Decoding {
                dec: Box::new(Decoder::new(enc, Kept::new(max))),
                raw: Kept::new(max),
            },
            None => Kind::Raw {
                raw: Kept::new(max),
                error: DecodeError::Unsupported,
            },
        };
        self
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if !self.enabled {
            return;
        }
        match &mut self.kind {
            Kind::Plain(k) | Kind::Raw { raw: k, .. } => {
                k.keep(data);
            }
            Kind::Decoding { dec, raw } => {
                raw.keep(data);
                if dec.write_chunk(data).is_ok() {
                    return;
                }
                let full = dec.sink().is_some_and(|s| s.full);
                let kept = dec.sink_mut().map(std::mem::take).unwrap_or_default();
                // At the cap: done (the decoder and the wire copy are
                // dropped). Otherwise the data is corrupt: keep the wire bytes.
                self.kind = if full {
                    Kind::Decoded { kept, error: None }
                } else {
                    Kind::Raw {
                        raw: std::mem::take(raw),
                        error: DecodeError::Failed,
                    }
                };
            }
            Kind::Decoded { .. } => {}
        }
    }

    /// Ends decoding (the body is complete, or as complete as it will be).
    fn finish_decoding(&mut self) {
        let Kind::Decoding { dec, raw } = &mut self.kind else {
            return;
        };
        let r = dec.finish();
        let full = dec.sink().is_some_and(|s| s.full);
        let kept = dec.sink_mut().map(std::mem::take).unwrap_or_default();
        self.kind = match r {
            Ok(()) => Kind::Decoded { kept, error: None },
            Err(_) if full => Kind::Decoded { kept, error: None },
            Err(_) if kept.buf.is_empty() => Kind::Raw {
                raw: std::mem::take(raw),
                error: DecodeError::Failed,
            },
            Err(_) => Kind::Decoded {
                kept,
                error: Some(DecodeError::Incomplete),
            },
        };
    }

    /// The body did not fit the cap (decoded size, for an encoded body),
    /// or its encoded stream ended early.
    pub fn truncated(&self) -> bool {
        self.enabled
            && match &self.kind {
                Kind::Plain(k) | Kind::Raw { raw: k, .. } => self.total > k.buf.len() as u64,
                Kind::Decoding { dec, .. } => dec.sink().is_some_and(|s| s.full),
                Kind::Decoded { kept, error } => kept.full || error.is_some(),
            }
    }

    /// Writes the captured body: UTF-8 as is, anything else base64, with
    /// its direction's flags (truncated, base64, content encoding, decode
    /// error). Returns the body bytes kept (before any base64: what
    /// `egret.body.bytes` counts).
    pub fn write(&mut self, rec: &mut Record, keys: &BodyKeys) -> u64 {
        self.finish_decoding();
        if let Some(e) = &self.encoding {
            rec.set(keys.content_encoding, e.as_str());
        }
        rec.set(keys.truncated, self.truncated());
        if !self.enabled {
            return 0;
        }
        let (buf, error) = match &self.kind {
            Kind::Plain(k) => (&k.buf, None),
            Kind::Decoded { kept, error } => (&kept.buf, *error),
            Kind::Raw { raw, error } => (&raw.buf, Some(*error)),
            Kind::Decoding { .. } => return 0,
        };
        if let Some(e) = error {
            rec.set(keys.decode_error, e.as_str());
        }
        if buf.is_empty() {
            return 0;
        }
        let kept = match std::str::from_utf8(buf) {
            Ok(s) => {
                rec.set(keys.body, s);
                buf.len()
            }
            Err(e) if self.truncated() && e.error_len().is_none() => {
                // Cut inside a multi-byte character: keep the valid prefix.
                let valid = &buf[..e.valid_up_to()];
                rec.set(keys.body, String::from_utf8_lossy(valid).into_owned());
                valid.len()
            }
            Err(_) => {
                rec.set(
                    keys.body,
                    base64::engine::general_purpose::STANDARD.encode(buf),
                );
                rec.set(keys.b64, true);
                return buf.len() as u64;
            }
        };
        rec.set(keys.b64, false);
        kept as u64
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

/// When a response's body chunks (data frames from upstream) arrived, as
/// the gaps between them: bounded whatever the stream's length.
#[derive(Debug, Default)]
pub struct Chunks {
    last: Option<Instant>,
    gaps: ChunkGaps,
}

impl Chunks {
    /// A non-empty chunk arrived `now`.
    fn arrived(&mut self, now: Instant) {
        if let Some(last) = self.last.replace(now) {
            self.gaps
                .observe(now.saturating_duration_since(last).as_secs_f64());
        }
    }
}

/// One HTTP exchange in flight.
pub struct Transaction {
    pub rec: Record,
    pub exchange: Exchange,
    pub started: Instant,
    pub first_byte: Option<Instant>,
    /// The response's chunk arrivals (`time_per_output_chunk`).
    pub chunks: Chunks,
    pub request: Arc<Mutex<Capture>>,
    pub response: Capture,
    /// Set when the response did not end cleanly.
    pub error: Option<&'static str>,
    pub finisher: Arc<dyn Finisher>,
    /// A legacy MCP stream: its events go to the pending-request registry
    /// as they pass.
    pub mcp_stream: Option<super::mcp_legacy::StreamHook>,
    /// A legacy MCP request awaiting its answer on the session's stream.
    pub mcp_call: Option<super::mcp_legacy::CallKey>,
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
        // A streamed response's first chunk is its first body byte.
        if let (Some(t), Some(true)) = (
            self.first_byte,
            self.rec.get_bool(sc::GEN_AI_REQUEST_STREAM),
        ) {
            self.rec.set(
                sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK,
                t.duration_since(self.started).as_secs_f64(),
            );
            // Each later chunk's gap: `time_per_output_chunk`, for the metrics.
            if self.chunks.gaps.count > 0 {
                self.rec
                    .set_chunk_gaps(std::mem::take(&mut self.chunks.gaps));
            }
        }
        let req_kept = {
            let mut req = self.request.lock().unwrap_or_else(|p| p.into_inner());
            self.rec.set(sc::REQ_BYTES, req.total);
            req.write(&mut self.rec, &REQUEST_KEYS)
        };
        self.rec.set(sc::RESP_BYTES, self.response.total);
        let resp_kept = self.response.write(&mut self.rec, &RESPONSE_KEYS);
        let req_trunc = self.rec.get_bool(sc::REQ_TRUNCATED).unwrap_or(false);
        self.rec
            .set(sc::BODY_TRUNCATED, req_trunc || self.response.truncated());
        // Body bytes kept, not the length of their text (base64 is 4/3).
        self.rec.set(sc::BODY_BYTES, req_kept + resp_kept);
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
            if let Some(mut h) = txn.mcp_stream.take() {
                h.end();
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
                        let now = Instant::now();
                        if txn.first_byte.is_none() {
                            txn.first_byte = Some(now);
                        }
                        if !frame.is_empty() {
                            txn.chunks.arrived(now);
                        }
                        txn.exchange.on_response_chunk(&frame);
                        if let Some(h) = txn.mcp_stream.as_mut() {
                            h.chunk(&mut txn.exchange);
                        }
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

    use crate::genai::decode::tests::{brotli, gzip, raw_deflate, zlib, zstd};

    fn written(c: &mut Capture, keys: &BodyKeys) -> Record {
        let mut r = Record::new("transaction");
        c.write(&mut r, keys);
        r
    }

    fn capture(max: usize, encoding: Option<&str>, chunks: &[&[u8]]) -> Capture {
        let mut c = Capture::new(max, true).with_content_encoding(encoding);
        for ch in chunks {
            c.push(ch);
        }
        c
    }

    const JSON: &str = r#"{"id":"msg_01","type":"message","content":[{"type":"text","text":"héron, aigrette, échasse"}],"usage":{"input_tokens":9,"output_tokens":16}}"#;

    #[test]
    fn capture_is_bounded_and_flags_truncation() {
        let mut c = capture(4, None, &[b"ab", b"cdef"]);
        assert_eq!(c.total, 6);
        assert!(c.truncated());
        let r = written(&mut c, &RESPONSE_KEYS);
        assert_eq!(r.get_str(sc::RESPONSE_BODY), Some("abcd"));
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(true));
        assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(false));
        assert!(r.get(sc::RESPONSE_CONTENT_ENCODING).is_none());
        let mut bin = capture(8, None, &[&[0xff, 0xfe, 0x00]]);
        let r = written(&mut bin, &RESPONSE_KEYS);
        assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(true));
        assert_eq!(r.get_str(sc::RESPONSE_BODY), Some("//4A"));
    }

    #[test]
    fn every_content_encoding_is_captured_decoded_at_any_chunking() {
        let plain = JSON.as_bytes();
        for (name, body) in [
            ("gzip", gzip(plain)),
            ("x-gzip", gzip(plain)),
            ("deflate", zlib(plain)),
            ("deflate", raw_deflate(plain)),
            ("br", brotli(plain)),
            ("zstd", zstd(plain)),
            ("GZIP", gzip(plain)),
            ("identity", plain.to_vec()),
        ] {
            for size in [1, 7, body.len()] {
                let chunks: Vec<&[u8]> = body.chunks(size).collect();
                let mut c = capture(64 << 10, Some(name), &chunks);
                assert_eq!(c.total, body.len() as u64, "{name}: wire bytes");
                let r = written(&mut c, &RESPONSE_KEYS);
                assert_eq!(r.get_str(sc::RESPONSE_BODY), Some(JSON), "{name}/{size}");
                assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(false), "{name}");
                assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(false), "{name}");
                assert!(r.get(sc::RESPONSE_BODY_DECODE_ERROR).is_none(), "{name}");
                let enc = (name != "identity").then(|| name.to_ascii_lowercase());
                assert_eq!(
                    r.get_str(sc::RESPONSE_CONTENT_ENCODING),
                    enc.as_deref(),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn the_cap_applies_to_the_decoded_size() {
        // 10 KiB of JSON-ish text compresses to far less than the cap: the
        // decoded size decides, exactly at the cap and one byte past it.
        let plain = format!("[{}]", "\"wading bird\",".repeat(700));
        let plain = plain.as_bytes();
        let wire = gzip(plain);
        assert!(wire.len() < 1024);
        let mut c = capture(1024, Some("gzip"), &[&wire]);
        let r = written(&mut c, &RESPONSE_KEYS);
        assert_eq!(
            r.get_str(sc::RESPONSE_BODY).map(str::as_bytes),
            Some(&plain[..1024])
        );
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(true));
        assert!(r.get(sc::RESPONSE_BODY_DECODE_ERROR).is_none());
        let mut exact = capture(plain.len(), Some("gzip"), &[&wire]);
        let r = written(&mut exact, &RESPONSE_KEYS);
        assert_eq!(r.get_str(sc::RESPONSE_BODY).map(str::as_bytes), Some(plain));
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(false));
        // Disabled: only metadata.
        let mut off = Capture::new(1024, false).with_content_encoding(Some("gzip"));
        off.push(&wire);
        let r = written(&mut off, &RESPONSE_KEYS);
        assert!(r.get(sc::RESPONSE_BODY).is_none());
        assert_eq!(r.get_str(sc::RESPONSE_CONTENT_ENCODING), Some("gzip"));
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(false));
    }

    #[test]
    fn compression_bombs_stop_decoding_at_the_cap() {
        // 64 MiB of zeros: ~64 KiB gzip, ~50 bytes br, a few KiB zstd.
        let zeros = vec![0u8; 64 << 20];
        let max = 4096;
        for (name, bomb) in [
            ("gzip", gzip(&zeros)),
            ("br", brotli(&zeros)),
            ("zstd", zstd(&zeros)),
        ] {
            let mut c = Capture::new(max, true).with_content_encoding(Some(name));
            let mut chunks = bomb.chunks(16 << 10);
            c.push(chunks.next().unwrap());
            // The first frame filled the cap: the decoder is gone, nothing
            // more is decoded, and no buffer grew past the cap.
            match &c.kind {
                Kind::Decoded { kept, error: None } => {
                    assert!(kept.full, "{name}");
                    assert_eq!(kept.buf.len(), max, "{name}");
                    assert!(
                        kept.buf.capacity() <= max,
                        "{name}: {}",
                        kept.buf.capacity()
                    );
                }
                other => panic!("{name}: {other:?}"),
            }
            for ch in chunks {
                c.push(ch);
            }
            assert_eq!(c.total, bomb.len() as u64);
            let r = written(&mut c, &RESPONSE_KEYS);
            assert_eq!(
                r.get_str(sc::RESPONSE_BODY).map(str::len),
                Some(max),
                "{name}"
            );
            assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(true), "{name}");
            assert!(r.get(sc::RESPONSE_BODY_DECODE_ERROR).is_none(), "{name}");
        }
    }

    #[test]
    fn wire_and_decoded_copies_never_grow_past_the_cap() {
        let mut k = Kept::new(1000);
        for _ in 0..100 {
            k.keep(&[b'x'; 37]);
        }
        assert_eq!(k.buf.len(), 1000);
        assert!(k.full && k.buf.capacity() <= 1000, "{}", k.buf.capacity());
    }

    #[test]
    fn decode_failures_keep_the_wire_bytes_and_say_so() {
        // Corrupt data: the wire bytes, base64 when binary.
        let mut corrupt = gzip(JSON.as_bytes());
        corrupt[12] ^= 0xff;
        corrupt[20] ^= 0xff;
        let mut c = capture(64 << 10, Some("gzip"), &[&corrupt]);
        let r = written(&mut c, &RESPONSE_KEYS);
        assert_eq!(
            r.get_str(sc::RESPONSE_BODY_DECODE_ERROR),
            Some("decode_failed")
        );
        assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(true));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(r.get_str(sc::RESPONSE_BODY).unwrap())
            .unwrap();
        assert_eq!(raw, corrupt);
        assert_eq!(r.get_str(sc::RESPONSE_CONTENT_ENCODING), Some("gzip"));

        // Not compressed at all although the header says so.
        let mut c = capture(64 << 10, Some("br"), &[b"plain text, not br"]);
        let r = written(&mut c, &RESPONSE_KEYS);
        assert_eq!(
            r.get_str(sc::RESPONSE_BODY_DECODE_ERROR),
            Some("decode_failed")
        );
        assert_eq!(r.get_str(sc::RESPONSE_BODY), Some("plain text, not br"));
        assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(false));

        // An encoding egret does not decode: the wire bytes, marked.
        let wire = brotli(JSON.as_bytes());
        let mut c = capture(64 << 10, Some("gzip, br"), &[&wire]);
        let r = written(&mut c, &RESPONSE_KEYS);
        assert_eq!(
            r.get_str(sc::RESPONSE_BODY_DECODE_ERROR),
            Some("unsupported_content_encoding")
        );
        assert_eq!(r.get_str(sc::RESPONSE_CONTENT_ENCODING), Some("gzip, br"));
        assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(true));

        // Cut short: the decoded prefix, truncated and marked incomplete.
        // (Several zstd blocks of 128 KiB, so a prefix decodes.)
        let big: String = (0..4000).map(|i| format!("{i}:{JSON}\n")).collect();
        for (name, wire) in [
            ("gzip", gzip(big.as_bytes())),
            ("zstd", zstd(big.as_bytes())),
        ] {
            let cut = &wire[..wire.len() * 3 / 4];
            let mut c = capture(1 << 20, Some(name), &[cut]);
            let r = written(&mut c, &RESPONSE_KEYS);
            assert_eq!(
                r.get_str(sc::RESPONSE_BODY_DECODE_ERROR),
                Some("incomplete"),
                "{name}"
            );
            assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(true), "{name}");
            let body = r.get_str(sc::RESPONSE_BODY).unwrap();
            assert!(!body.is_empty() && big.starts_with(body), "{name}");
        }
        // Cut before anything decoded: nothing to show but the wire bytes.
        let wire = gzip(JSON.as_bytes());
        let mut c = capture(64 << 10, Some("gzip"), &[&wire[..5]]);
        let r = written(&mut c, &RESPONSE_KEYS);
        assert_eq!(
            r.get_str(sc::RESPONSE_BODY_DECODE_ERROR),
            Some("decode_failed")
        );
        assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(true));
    }

    #[test]
    fn flags_are_per_direction() {
        // A text request beside a binary (undecodable) response: only the
        // response is base64, and each side says how it was encoded.
        let mut req = capture(1024, None, &[br#"{"model":"m"}"#]);
        let mut resp = capture(1024, Some("zstd"), &[&[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff]]);
        let mut r = Record::new("transaction");
        // What is kept counts in bytes, base64 or not (6 bytes are 8
        // base64 characters).
        assert_eq!(req.write(&mut r, &REQUEST_KEYS), 13);
        assert_eq!(resp.write(&mut r, &RESPONSE_KEYS), 6);
        assert_eq!(r.get_str(sc::RESPONSE_BODY).map(str::len), Some(8));
        assert_eq!(r.get_str(sc::REQUEST_BODY), Some(r#"{"model":"m"}"#));
        assert_eq!(r.get_bool(sc::REQUEST_BODY_B64), Some(false));
        assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(true));
        assert!(r.get(sc::REQUEST_CONTENT_ENCODING).is_none());
        assert_eq!(r.get_str(sc::RESPONSE_CONTENT_ENCODING), Some("zstd"));
        assert!(r.get(sc::REQUEST_BODY_DECODE_ERROR).is_none());
        assert_eq!(
            r.get_str(sc::RESPONSE_BODY_DECODE_ERROR),
            Some("decode_failed")
        );

        // A gzip request body is captured decoded too.
        let wire = gzip(JSON.as_bytes());
        let mut req = capture(1024, Some("gzip"), &[&wire]);
        let mut r = Record::new("transaction");
        req.write(&mut r, &REQUEST_KEYS);
        assert_eq!(r.get_str(sc::REQUEST_BODY), Some(JSON));
        assert_eq!(r.get_str(sc::REQUEST_CONTENT_ENCODING), Some("gzip"));
        assert_eq!(r.get_bool(sc::REQ_TRUNCATED), Some(false));
        assert!(r.get(sc::RESPONSE_BODY).is_none());
    }

    /// Keeps the sealed records.
    #[derive(Default)]
    struct Collect(Mutex<Vec<Record>>);

    impl Finisher for Collect {
        fn finish(&self, mut txn: Transaction) {
            txn.seal();
            self.0.lock().unwrap().push(txn.rec);
        }
    }

    #[test]
    fn the_tap_forwards_the_encoded_bytes_and_records_the_decoded_body() {
        let wire = gzip(JSON.repeat(20).as_bytes());
        let frames: Vec<Bytes> = wire.chunks(100).map(Bytes::copy_from_slice).collect();
        let collect = Arc::new(Collect::default());
        let txn = Box::new(Transaction {
            rec: Record::new("transaction"),
            exchange: Exchange::new(None, crate::genai::Limits::default()),
            started: Instant::now(),
            first_byte: None,
            chunks: Chunks::default(),
            request: Arc::new(Mutex::new(Capture::new(1024, true))),
            response: Capture::new(1 << 20, true).with_content_encoding(Some("gzip")),
            error: None,
            finisher: collect.clone(),
            mcp_stream: None,
            mcp_call: None,
        });
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(
            frames
                .into_iter()
                .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
        ));
        let mut tap = ResponseTap::new(body, txn);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut seen = Vec::new();
        while let Poll::Ready(Some(f)) = Pin::new(&mut tap).poll_frame(&mut cx) {
            seen.extend_from_slice(f.unwrap().data_ref().unwrap());
        }
        drop(tap);
        assert_eq!(seen, wire, "the client got other bytes than upstream sent");
        let recs = collect.0.lock().unwrap();
        let r = &recs[0];
        assert_eq!(r.get_str(sc::RESPONSE_BODY), Some(JSON.repeat(20).as_str()));
        assert_eq!(r.get_i64(sc::RESP_BYTES), Some(wire.len() as i64));
        assert_eq!(r.get_str(sc::RESPONSE_CONTENT_ENCODING), Some("gzip"));
        assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(false));
    }

    /// Runs `frames` through a response tap whose record says `stream`.
    fn tapped(frames: Vec<Bytes>, stream: Option<bool>) -> Record {
        let collect = Arc::new(Collect::default());
        let mut rec = Record::new("transaction");
        rec.set_opt(sc::GEN_AI_REQUEST_STREAM, stream);
        let txn = Box::new(Transaction {
            rec,
            exchange: Exchange::new(None, crate::genai::Limits::default()),
            started: Instant::now(),
            first_byte: None,
            chunks: Chunks::default(),
            request: Arc::new(Mutex::new(Capture::new(1024, true))),
            response: Capture::new(1 << 20, true),
            error: None,
            finisher: collect.clone(),
            mcp_stream: None,
            mcp_call: None,
        });
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(
            frames
                .into_iter()
                .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
        ));
        let mut tap = ResponseTap::new(body, txn);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(Some(_)) = Pin::new(&mut tap).poll_frame(&mut cx) {}
        drop(tap);
        let r = collect.0.lock().unwrap().pop().unwrap();
        r
    }

    #[test]
    fn a_streamed_response_keeps_one_gap_per_chunk_after_the_first() {
        let frames = |n: usize| {
            let mut v: Vec<Bytes> = (0..n)
                .map(|i| Bytes::from(format!("data: {i}\n\n")))
                .collect();
            v.insert(1, Bytes::new()); // an empty frame is no chunk
            v
        };
        let r = tapped(frames(5), Some(true));
        let g = r.chunk_gaps().expect("gaps of a streamed response");
        assert_eq!(g.count, 4);
        assert_eq!(g.buckets.iter().sum::<u64>(), 4);
        assert!(r.get(sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK).is_some());
        // Not streamed (or not known to be): neither TTFC nor gaps.
        for stream in [Some(false), None] {
            let r = tapped(frames(5), stream);
            assert_eq!(r.chunk_gaps(), None);
            assert!(r.get(sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK).is_none());
        }
        // One chunk: no gap.
        assert_eq!(
            tapped(vec![Bytes::from("x")], Some(true)).chunk_gaps(),
            None
        );
    }

    #[test]
    fn chunk_gaps_run_from_arrival_to_arrival() {
        let t0 = Instant::now();
        let mut c = Chunks::default();
        for ms in [0u64, 5, 35, 1035] {
            c.arrived(t0 + std::time::Duration::from_millis(ms));
        }
        assert_eq!(c.gaps.count, 3);
        // 5 ms → (0, 0.01], 30 ms → (0.02, 0.04], 1 s → (0.64, 1.28].
        assert_eq!(
            (c.gaps.buckets[0], c.gaps.buckets[2], c.gaps.buckets[7]),
            (1, 1, 1)
        );
        assert!((c.gaps.sum - 1.035).abs() < 1e-9);
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
