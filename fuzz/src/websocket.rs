//! `websocket`: arbitrary bytes, arbitrarily chunked, through
//! [`FrameParser`], and the messages it yields through a Realtime /
//! Responses [`Session`].
//!
//! Layout: `[bound][flags][plan…][stream…]`: `bound` picks the message cap
//! (`bound * 8` bytes; 0: 4 MiB), `flags` bit 0 the session flavor
//! (Realtime / Responses), bit 1 which side the stream comes from (the
//! client's or the server's), then a chunking [`Plan`], then the stream.
//!
//! Invariants:
//! - chunking changes nothing: the events (messages, skips, control
//!   frames, the framing error) equal those of the whole stream fed at once;
//! - without a framing error the events are exactly the reference
//!   interpretation (a whole-buffer RFC 6455 reader written independently
//!   here), with oversized messages reported as skipped;
//! - a kept message is at most the cap, a skipped one larger;
//! - the events' wire sizes add up to at most the stream's length, and to
//!   exactly it when the stream ended on a frame boundary outside a
//!   fragmented message;
//! - the session parser never panics, writes each response once, and the
//!   responses' bytes add up to at most the bytes it was given.
use egret::genai::{
    realtime::{Flavor, Session},
    websocket::{Event, FrameParser, Kind},
};
use egret::record::Record;

use crate::input::{Plan, Reader};

/// An owned event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Msg(bool, Vec<u8>, u64),
    Skipped(bool, u64, u64),
    Ping(bool, u64),
    Close(Option<u16>, u64),
    Error,
}

impl Ev {
    fn wire(&self) -> u64 {
        match self {
            Ev::Msg(_, _, w) | Ev::Skipped(_, _, w) | Ev::Ping(_, w) | Ev::Close(_, w) => *w,
            Ev::Error => 0,
        }
    }
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Message { kind, data, wire } => Ev::Msg(kind == Kind::Text, data.to_vec(), wire),
        Event::Skipped { kind, len, wire } => Ev::Skipped(kind == Kind::Text, len, wire),
        Event::Ping { pong, wire } => Ev::Ping(pong, wire),
        Event::Close { code, wire } => Ev::Close(code, wire),
        Event::Error(_) => Ev::Error,
    }
}

fn run(chunks: &[&[u8]], max: usize) -> (Vec<Ev>, bool) {
    let mut p = FrameParser::new(max);
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| out.push(own(e)));
    }
    (out, p.has_pending())
}

/// The reference: the whole stream read frame by frame. Stops at the first
/// framing error (pushing `Error`) or at a frame cut short.
fn reference(mut s: &[u8], max: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    // The open message: (text, payload, wire, length).
    let mut open: Option<(bool, Vec<u8>, u64, u64)> = None;
    loop {
        if s.len() < 2 {
            return out;
        }
        let (b0, b1) = (s[0], s[1]);
        let (fin, rsv, op, masked) = (b0 >> 7 == 1, b0 & 0x70, b0 & 0x0f, b1 >> 7 == 1);
        let mut at = 2;
        let len = match b1 & 0x7f {
            126 => {
                if s.len() < 4 {
                    return out;
                }
                at = 4;
                u64::from(u16::from_be_bytes([s[2], s[3]]))
            }
            127 => {
                if s.len() < 10 {
                    return out;
                }
                at = 10;
                let mut b = [0u8; 8];
                b.copy_from_slice(&s[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mask = if masked {
            if s.len() < at + 4 {
                return out;
            }
            let k = [s[at], s[at + 1], s[at + 2], s[at + 3]];
            at += 4;
            Some(k)
        } else {
            None
        };
        let bad = len >> 63 != 0
            || rsv != 0
            || matches!(op, 3..=7 | 11..=15)
            || (op >= 8 && (!fin || len > 125))
            || (op == 0 && open.is_none())
            || ((op == 1 || op == 2) && open.is_some());
        if bad {
            out.push(Ev::Error);
            return out;
        }
        if ((s.len() - at) as u64) < len {
            return out;
        }
        let mut payload = s[at..at + len as usize].to_vec();
        if let Some(k) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        let wire = at as u64 + len;
        s = &s[at + len as usize..];
        match op {
            8 => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                out.push(Ev::Close(code, wire));
            }
            9 | 10 => out.push(Ev::Ping(op == 10, wire)),
            _ => {
                let m = open.get_or_insert((op == 1, Vec::new(), 0, 0));
                m.2 += wire;
                m.3 += len;
                m.1.extend_from_slice(&payload);
                if fin {
                    let (text, data, w, l) = open.take().unwrap_or_default();
                    out.push(if l > max as u64 {
                        Ev::Skipped(text, l, w)
                    } else {
                        Ev::Msg(text, data, w)
                    });
                }
            }
        }
    }
}

pub fn websocket(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = match r.byte() {
        0 => 4 << 20,
        b => usize::from(b) * 8,
    };
    let flags = r.byte();
    let plan = Plan::read(&mut r);
    let stream = r.rest();

    let (chunked, _) = run(&plan.split(stream), max);
    let (whole, pending) = run(&[stream], max);
    assert_eq!(chunked, whole, "events depend on chunking");
    assert_eq!(
        whole,
        reference(stream, max),
        "events differ from the reference"
    );
    let wire: u64 = whole.iter().map(Ev::wire).sum();
    assert!(
        wire <= stream.len() as u64,
        "more wire bytes than the stream"
    );
    if !pending && !whole.contains(&Ev::Error) {
        assert_eq!(wire, stream.len() as u64, "wire bytes lost");
    }
    for e in &whole {
        match e {
            Ev::Msg(_, d, _) => assert!(d.len() <= max, "a kept message over the cap"),
            Ev::Skipped(_, l, _) => assert!(*l > max as u64, "a skipped message within the cap"),
            _ => {}
        }
    }

    // The session parser on those messages.
    let flavor = if flags & 1 == 0 {
        Flavor::Realtime
    } else {
        Flavor::Responses
    };
    let client = flags & 2 != 0;
    // Bit 2: the route captures bodies, at most 16 × (bits 3..8) bytes per
    // direction.
    let keep = (flags & 4 != 0).then_some(usize::from(flags >> 3) * 16);
    let mut s =
        Session::new(flavor, Some("openai".into()), "/v1/realtime?model=m").capturing(keep);
    let mut turns = Vec::new();
    let mut given = 0u64;
    for e in &whole {
        given += e.wire();
        let mut done = |t| turns.push(t);
        match e {
            Ev::Msg(text, d, w) if client => s.on_client(*text, d, *w, &mut done),
            Ev::Msg(text, d, w) => s.on_server(*text, d, *w, &mut done),
            Ev::Skipped(_, _, w) if client => s.on_client_skipped(*w),
            Ev::Skipped(_, _, w) => s.on_server_skipped(*w),
            Ev::Ping(_, w) | Ev::Close(_, w) if !client => s.on_server_other(*w),
            Ev::Error => s.on_frame_error(),
            _ => {}
        }
    }
    s.finish(&mut |t| turns.push(t));
    assert_eq!(s.turns, turns.len() as u64, "turns counted once each");
    let mut bytes = 0u64;
    for t in turns {
        bytes += t.client_bytes + t.server_bytes;
        let mut rec = Record::new("transaction");
        t.write(&mut rec);
        assert_eq!(rec.get_str("gen_ai.provider.name"), Some("openai"));
        for key in ["egret.request.body", "egret.response.body"] {
            let Some(body) = rec.get_str(key) else {
                continue;
            };
            let cap = keep.expect("a body kept without capture");
            assert!(body.len() <= cap, "{key} over the cap");
            for line in body.lines() {
                assert!(
                    serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok(),
                    "{key}: a kept line is not whole JSON: {line:?}"
                );
            }
        }
        // The exporters' reading of it: no panic, whatever it holds.
        let api = egret::genai::Api::from_name(rec.get_str("egret.genai.api").unwrap_or(""));
        let api = api.expect("a response names its API");
        let _ = egret::genai::messages::assemble(
            api,
            egret::genai::messages::Bodies {
                request: rec.get_str("egret.request.body"),
                response: rec.get_str("egret.response.body"),
                response_base64: false,
                truncated: rec.get_bool("egret.body.truncated") == Some(true),
            },
        );
    }
    assert!(bytes <= given, "responses hold more bytes than the session");
}
