//! `eventstream`: arbitrary bytes, arbitrarily chunked, through the AWS
//! event-stream decoder ([`egret::genai::eventstream::Decoder`], what
//! Bedrock's ConverseStream and InvokeModelWithResponseStream answers go
//! through).
//!
//! Layout: `[bound][plan…][stream…]`: `bound` picks the largest message
//! (0: the agent's 4 MiB default, else `bound * 8`), then a chunking
//! [`Plan`], then the stream.
//!
//! Invariants:
//! - chunking changes nothing: the messages, the errors (in order), the
//!   pending flag and whether the framing was lost equal those of the whole
//!   stream fed at once;
//! - the results are exactly those of an independent whole-buffer reading
//!   of the format ([`reference`]: prelude CRC, lengths, bound, message
//!   CRC, header types 0–9);
//! - every message is within the bound, and re-encoding its headers and
//!   payload ([`eventstream::encode`]) gives back exactly the bytes it was
//!   read from.
use egret::genai::eventstream::{self, Decoder, FrameError, HeaderValue};

use crate::input::{Plan, Reader};

/// What a decoder reported: a message as (its encoding, header count,
/// payload length), or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Msg(Vec<u8>, usize),
    Err(FrameError),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    pub got: Vec<Got>,
    pub pending: bool,
    pub dead: bool,
}

pub fn run(chunks: &[&[u8]], max: usize) -> Run {
    let mut d = Decoder::new(max);
    let mut got = Vec::new();
    for c in chunks {
        d.feed(c, |m| {
            got.push(match m {
                Ok(m) => {
                    let headers: Vec<(&str, HeaderValue<'_>)> = m
                        .headers
                        .iter()
                        .map(|h| h.expect("a delivered message has valid headers"))
                        .collect();
                    let bytes = eventstream::encode(&headers, m.payload);
                    assert!(bytes.len() <= max.max(16), "message over the bound");
                    Got::Msg(bytes, headers.len())
                }
                Err(e) => Got::Err(e),
            })
        });
    }
    Run {
        got,
        pending: d.has_pending(),
        dead: d.is_dead(),
    }
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// Number of headers when `h` is a valid header block, else `None`.
fn headers_ok(mut h: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !h.is_empty() {
        let name_len = h[0] as usize;
        if name_len == 0 || h.len() < 2 + name_len {
            return None;
        }
        std::str::from_utf8(&h[1..1 + name_len]).ok()?;
        let kind = h[1 + name_len];
        h = &h[2 + name_len..];
        let size = match kind {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                if h.len() < 2 {
                    return None;
                }
                let len = u16::from_be_bytes([h[0], h[1]]) as usize;
                if h.len() < 2 + len {
                    return None;
                }
                if kind == 7 {
                    std::str::from_utf8(&h[2..2 + len]).ok()?;
                }
                2 + len
            }
            _ => return None,
        };
        if h.len() < size {
            return None;
        }
        h = &h[size..];
        n += 1;
    }
    Some(n)
}

/// The format read from the whole stream at once, written from the spec
/// without the decoder's incremental state.
pub fn reference(stream: &[u8], max: usize) -> Run {
    let max = max.max(16);
    let mut got = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.is_empty() {
            return Run {
                got,
                pending: false,
                dead: false,
            };
        }
        if rest.len() < 12 {
            return Run {
                got,
                pending: true,
                dead: false,
            };
        }
        let total = be32(rest);
        let hlen = be32(&rest[4..]);
        if crc32(&rest[..8]) != be32(&rest[8..]) as u32 || total < 16 || hlen > total - 16 {
            got.push(Got::Err(FrameError::Invalid));
            return Run {
                got,
                pending: false,
                dead: true,
            };
        }
        if total > max {
            got.push(Got::Err(FrameError::TooLarge));
            if rest.len() < total {
                return Run {
                    got,
                    pending: true,
                    dead: false,
                };
            }
            at += total;
            continue;
        }
        if rest.len() < total {
            return Run {
                got,
                pending: true,
                dead: false,
            };
        }
        let msg = &rest[..total];
        let crc_ok = crc32(&msg[..total - 4]) == be32(&msg[total - 4..]) as u32;
        match headers_ok(&msg[12..12 + hlen]) {
            Some(n) if crc_ok => got.push(Got::Msg(msg.to_vec(), n)),
            _ => got.push(Got::Err(FrameError::Invalid)),
        }
        at += total;
    }
}

/// CRC-32 (IEEE, reflected, 0xEDB88320), bit by bit: independent of the
/// agent's table-driven `crc32fast`.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub fn eventstream(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = match r.byte() {
        0 => 4 << 20,
        b => usize::from(b) * 8,
    };
    let plan = Plan::read(&mut r);
    let stream = r.rest();

    let chunked = run(&plan.split(stream), max);
    let whole = run(&Plan::whole().split(stream), max);
    assert_eq!(chunked, whole, "results depend on chunking");
    assert_eq!(
        whole,
        reference(stream, max),
        "results differ from the reference"
    );
}
