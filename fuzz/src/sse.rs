//! `sse`: arbitrary bytes, arbitrarily chunked, through [`SseParser`].
//!
//! Layout: `[bound][plan…][stream…]`: `bound` picks `max_event_bytes`
//! (0: the agent's 4 MiB default, else `bound * 4`), then a chunking
//! [`Plan`], then the stream.
//!
//! Invariants:
//! - every dispatched event is within the bound (data + its newline, and
//!   the name unless it is the default `message`);
//! - block ends are offsets into the chunk just fed, non-decreasing, right
//!   after a line terminator, and the same stream positions whatever the
//!   chunking (but for a `\r\n` split between two chunks, reported after
//!   the `\r`);
//! - chunking changes nothing: the events and the overflow flag equal
//!   those of the whole stream fed at once;
//! - without overflow the events are exactly the reference interpretation
//!   ([`oracle::sse_events`]); with overflow they are a subsequence of it.
use egret::genai::SseParser;

use crate::input::{Plan, Reader};
use crate::oracle::{self, Event};

pub struct Run {
    pub events: Vec<Event>,
    /// Stream offsets of the block ends (finish excluded).
    pub ends: Vec<usize>,
    /// Offsets where a chunk boundary fell (to excuse split `\r\n`s).
    pub boundaries: Vec<usize>,
    pub overflowed: bool,
}

pub fn run(chunks: &[&[u8]], max: usize) -> Run {
    let mut p = SseParser::new(max);
    let mut run = Run {
        events: Vec::new(),
        ends: Vec::new(),
        boundaries: Vec::new(),
        overflowed: false,
    };
    let mut base = 0;
    let bound = max.max(1);
    for chunk in chunks {
        let mut last = 0;
        p.feed(chunk, |b| {
            assert!(b.end <= chunk.len(), "block end past the chunk");
            assert!(b.end >= last, "block ends go backwards");
            assert!(
                b.end > 0 && matches!(chunk[b.end - 1], b'\n' | b'\r'),
                "a block ends right after a line terminator"
            );
            last = b.end;
            run.ends.push(base + b.end);
            if let Some(e) = b.event {
                assert!(e.data.len() < bound, "event data over the bound");
                assert!(
                    e.event == "message" || e.event.len() <= bound,
                    "event name over the bound"
                );
                run.events.push((e.event.to_owned(), e.data.to_vec()));
            }
        });
        base += chunk.len();
        run.boundaries.push(base);
    }
    p.finish(|b| {
        assert_eq!(b.end, 0, "finish reports offset 0");
        if let Some(e) = b.event {
            assert!(e.data.len() < bound, "event data over the bound");
            run.events.push((e.event.to_owned(), e.data.to_vec()));
        }
    });
    assert!(!p.has_pending(), "finish leaves nothing pending");
    run.overflowed = p.overflowed();
    run
}

fn is_subsequence(small: &[Event], big: &[Event]) -> bool {
    let mut it = big.iter();
    small.iter().all(|e| it.any(|b| b == e))
}

pub fn sse(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = match r.byte() {
        0 => 4 << 20,
        b => usize::from(b) * 4,
    };
    let plan = Plan::read(&mut r);
    let stream = r.rest();

    let chunked = run(&plan.split(stream), max);
    let whole = run(&Plan::whole().split(stream), max);

    assert_eq!(chunked.ends.len(), whole.ends.len(), "block count");
    for (&c, &w) in chunked.ends.iter().zip(&whole.ends) {
        let split_crlf = w == c + 1
            && chunked.boundaries.contains(&c)
            && stream[c - 1] == b'\r'
            && stream[c] == b'\n';
        assert!(c == w || split_crlf, "block end {c} vs {w} unchunked");
    }
    assert_eq!(
        chunked.overflowed, whole.overflowed,
        "overflow depends on chunking"
    );
    assert_eq!(chunked.events, whole.events, "events depend on chunking");

    let reference = oracle::sse_events(stream);
    if whole.overflowed {
        assert!(
            is_subsequence(&whole.events, &reference),
            "events not in the reference"
        );
    } else {
        assert_eq!(whole.events, reference, "events differ from the reference");
    }
}
