//! `usage_filter`: [`UsageChunkFilter`] over arbitrary, arbitrarily chunked
//! event streams.
//!
//! Layout: `[bound][plan…][stream…]` (`bound`: 0 → 4 MiB, else
//! `bound * 8` bytes).
//!
//! Invariants:
//! - at most one chunk is removed, and nothing else changes: with
//!   `stripped() == 0` the output is the input byte for byte; with 1 it is
//!   the input with one contiguous range cut out, and that range is one
//!   SSE block whose event is a usage-only chunk (`"choices": []` with a
//!   `usage` object);
//! - so an input without any usage-only chunk comes out unchanged;
//! - the filter holds back at most `max_event_bytes` (plus, transiently,
//!   the block it removes) at any time.
use egret::genai::UsageChunkFilter;

use crate::input::{Plan, Reader};
use crate::oracle;

pub fn usage_filter(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = match r.byte() {
        0 => 4 << 20,
        b => usize::from(b) * 8,
    };
    let plan = Plan::read(&mut r);
    let stream = r.rest();

    let mut f = UsageChunkFilter::new(max);
    let mut out = Vec::new();
    let mut fed = 0usize;
    // (fed, forwarded) after every push.
    let mut lag = Vec::new();
    for chunk in plan.split(stream) {
        f.push(chunk, &mut out);
        fed += chunk.len();
        assert!(out.len() <= fed, "forwarded more than was fed");
        lag.push((fed, out.len()));
    }
    f.finish(&mut out);
    let stripped = f.stripped();
    assert!(stripped <= 1, "more than one usage chunk stripped");

    let reference = oracle::sse_events(stream);
    let any_usage_chunk = reference
        .iter()
        .any(|(_, d)| oracle::may_be_usage_only_chunk(d));
    if !any_usage_chunk {
        assert_eq!(stripped, 0, "stripped a chunk that is no usage chunk");
    }
    if stripped == 0 {
        assert!(out == stream, "output differs from the input");
    } else {
        assert!(out.len() < stream.len(), "stripped nothing");
        let removed_len = stream.len() - out.len();
        let lcp = out.iter().zip(stream).take_while(|(a, b)| a == b).count();
        let lcs = out
            .iter()
            .rev()
            .zip(stream.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            lcp + lcs >= out.len(),
            "output is not the input minus one range"
        );
        // The cut can sit anywhere between the two alignments (the removed
        // block may share bytes with its neighbours): one of the places at
        // a line start must be exactly one usage-only block.
        let lo = out.len() - lcs.min(out.len());
        let hi = lcp.min(out.len());
        let ok = (lo..=hi)
            .filter(|&at| at == 0 || matches!(stream[at - 1], b'\n' | b'\r'))
            .take(64)
            .any(|at| {
                let removed = &stream[at..at + removed_len];
                let ev = oracle::sse_events(removed);
                ev.len() == 1 && oracle::may_be_usage_only_chunk(&ev[0].1)
            });
        assert!(ok, "the removed range is not one usage-only block");
    }
    for (fed, fwd) in lag {
        let held = fed - fwd;
        let removed = stream.len() - out.len();
        assert!(
            held <= max + removed,
            "held back {held} bytes with a bound of {max}"
        );
    }
}
