//! `body_tap`: the proxy's bounded body capture ([`Capture`]) and the
//! response tap that owns a transaction ([`ResponseTap`]), over arbitrary
//! frames.
//!
//! Layout: `[max][flags][plan…][body…]`: capture bound `max * 3` bytes;
//! flags bit 0: capture enabled, bit 1: the client goes away after
//! `flags >> 2` frames, bit 2..: that count.
//!
//! Invariants:
//! - [`Capture`]: `total` is every byte pushed; what is kept is exactly
//!   the first `min(total, max)` bytes when enabled, nothing otherwise;
//!   `truncated()` is `enabled && total > max`; the record carries that
//!   prefix as text (valid UTF-8, or its longest valid prefix when cut
//!   mid-character) or base64, never more than `max` bytes;
//! - [`ResponseTap`]: frames reach the client unchanged and in order;
//!   the transaction is finished exactly once, with the response byte
//!   count of what passed, and no error when the body was read to its end,
//!   `client_aborted` when it was dropped before.
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use egret::genai::{Exchange, Limits};
use egret::proxy::tap::{Capture, Chunks, Finisher, ResponseTap, Transaction, RESPONSE_KEYS};
use egret::record::Record;
use egret::semconv as sc;
use http_body::{Body, Frame};

use crate::input::{Plan, Reader};

fn check_capture(chunks: &[&[u8]], body: &[u8], max: usize, enabled: bool) {
    let mut c = Capture::new(max, enabled);
    for ch in chunks {
        c.push(ch);
    }
    assert_eq!(c.total, body.len() as u64, "total");
    let kept = if enabled { body.len().min(max) } else { 0 };
    assert_eq!(c.truncated(), enabled && body.len() > max, "truncated flag");

    let mut rec = Record::new("transaction");
    c.write(&mut rec, &RESPONSE_KEYS);
    assert_eq!(rec.get_bool(sc::RESP_TRUNCATED), Some(c.truncated()));
    let prefix = &body[..kept];
    match rec.get_str(sc::RESPONSE_BODY) {
        None => assert!(kept == 0, "captured bytes not written"),
        Some(s) if rec.get_bool(sc::RESPONSE_BODY_B64) == Some(true) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("valid base64");
            assert!(raw == prefix, "base64 body is not the captured prefix");
        }
        Some(s) => {
            assert!(
                prefix.starts_with(s.as_bytes()),
                "text body is not a prefix"
            );
            if s.len() < kept {
                // Only a multi-byte character cut at the bound is dropped.
                assert!(c.truncated() && kept - s.len() < 4, "text body lost bytes");
                assert!(std::str::from_utf8(prefix).is_err());
            }
        }
    }
}

/// Yields the chunks as data frames.
struct Frames {
    chunks: std::collections::VecDeque<Bytes>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// Keeps the sealed records (not the transactions: they hold the
/// finisher, a cycle).
#[derive(Default)]
struct Collect(Mutex<Vec<Record>>);

impl Finisher for Collect {
    fn finish(&self, mut txn: Transaction) {
        txn.seal();
        self.0.lock().unwrap().push(txn.rec);
    }
}

fn check_tap(chunks: &[&[u8]], body: &[u8], max: usize, enabled: bool, abort_after: Option<usize>) {
    let collect = Arc::new(Collect::default());
    let finisher: Arc<dyn Finisher> = collect.clone();
    let txn = Box::new(Transaction {
        rec: Record::new("transaction"),
        exchange: Exchange::new(None, Limits::default()),
        started: Instant::now(),
        first_byte: None,
        request: Arc::new(Mutex::new(Capture::new(max, enabled))),
        response: Capture::new(max, enabled),
        error: None,
        chunks: Chunks::default(),
        finisher,
        mcp_stream: None,
        mcp_call: None,
    });
    let inner = Frames {
        chunks: chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
    };
    let mut tap = ResponseTap::new(inner, txn);
    assert!(!tap.rewrites_body());
    let mut cx = Context::from_waker(Waker::noop());
    let mut seen = Vec::new();
    let mut frames = 0;
    let mut ended = false;
    loop {
        if abort_after.is_some_and(|n| frames >= n) {
            break;
        }
        match Pin::new(&mut tap).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                frames += 1;
                seen.extend_from_slice(f.data_ref().expect("a data frame"));
            }
            Poll::Ready(Some(Err(e))) => match e {},
            Poll::Ready(None) => {
                ended = true;
                break;
            }
            Poll::Pending => unreachable!("the test body is always ready"),
        }
    }
    // Once the last frame passed, the tap finished the transaction itself.
    let complete = ended || frames == chunks.len();
    drop(tap);
    assert!(body.starts_with(&seen), "the client got other bytes");
    let done = collect.0.lock().unwrap();
    assert_eq!(
        done.len(),
        1,
        "the transaction finished {} times",
        done.len()
    );
    let rec = &done[0];
    assert_eq!(rec.get_i64(sc::RESP_BYTES), Some(seen.len() as i64));
    let err = rec.get_str(sc::ERROR_TYPE);
    if complete {
        assert_eq!(err, None, "a complete body recorded an error");
    } else {
        assert_eq!(err, Some("client_aborted"));
    }
}

pub fn body_tap(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = usize::from(r.byte()) * 3;
    let flags = r.byte();
    let plan = Plan::read(&mut r);
    let body = r.rest();
    let chunks = plan.split(body);
    let enabled = flags & 1 != 0;
    check_capture(&chunks, body, max, enabled);
    let abort_after = (flags & 2 != 0).then_some(usize::from(flags >> 2));
    check_tap(&chunks, body, max, enabled, abort_after);
}
