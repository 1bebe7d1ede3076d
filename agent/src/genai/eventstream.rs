//! Incremental decoder of the AWS event-stream binary framing
//! (`Content-Type: application/vnd.amazon.eventstream`), as Bedrock's
//! ConverseStream and InvokeModelWithResponseStream send it.
//!
//! One message on the wire:
//!
//! ```text
//! total length  u32 BE   the whole message, these 4 bytes and the CRCs included
//! headers len   u32 BE
//! prelude CRC   u32 BE   CRC-32 (IEEE) of the 8 bytes above
//! headers       headers-len bytes, each:
//!                 name length u8, name (UTF-8),
//!                 value type u8, value:
//!                   0 true, 1 false (no bytes), 2 byte (i8), 3 short (i16 BE),
//!                   4 integer (i32 BE), 5 long (i64 BE),
//!                   6 byte array (u16 BE length + bytes),
//!                   7 string (u16 BE length + UTF-8),
//!                   8 timestamp (i64 BE, ms since the epoch), 9 UUID (16 bytes)
//! payload       total - headers len - 16 bytes
//! message CRC   u32 BE   CRC-32 of everything before it
//! ```
//!
//! Fed arbitrary chunks (a message may be split at any byte); it only reads
//! a copy of the stream, the proxy forwards the bytes as they come. State is
//! bounded: a message is buffered only while incomplete, and a message whose
//! declared length exceeds the bound is skipped without being buffered
//! ([`FrameError::TooLarge`]; the stream goes on). A message whose message
//! CRC or headers are wrong is dropped ([`FrameError::Invalid`]; the prelude
//! CRC held, so the next message is still found). A wrong prelude CRC or an
//! impossible length means the framing is lost: the decoder reports
//! [`FrameError::Invalid`] once and reads nothing more.

/// A header value (spec types 0–9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(&'a [u8]),
    String(&'a str),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

impl<'a> HeaderValue<'a> {
    /// The value when it is a string.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            HeaderValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// The headers of one message (validated when the message was decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers<'a> {
    raw: &'a [u8],
}

impl<'a> Headers<'a> {
    /// Every `(name, value)` in wire order.
    pub fn iter(&self) -> HeaderIter<'a> {
        HeaderIter { rest: self.raw }
    }

    /// The value of the first header called `name` (case-sensitive, as the
    /// spec's `:`-prefixed names are).
    pub fn get(&self, name: &str) -> Option<HeaderValue<'a>> {
        self.iter()
            .map_while(Result::ok)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The string value of header `name`.
    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| v.as_str())
    }
}

/// Iterator over raw headers; yields `Err(())` once at malformed bytes.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (a, b) = rest.split_at(n);
    *rest = b;
    Some(a)
}

fn array<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    take(rest, N).and_then(|b| b.try_into().ok())
}

fn header<'a>(rest: &mut &'a [u8]) -> Option<(&'a str, HeaderValue<'a>)> {
    let [name_len] = array::<1>(rest)?;
    if name_len == 0 {
        return None;
    }
    let name = std::str::from_utf8(take(rest, name_len as usize)?).ok()?;
    let [kind] = array::<1>(rest)?;
    let value = match kind {
        0 => HeaderValue::Bool(true),
        1 => HeaderValue::Bool(false),
        2 => HeaderValue::Byte(i8::from_be_bytes(array(rest)?)),
        3 => HeaderValue::Short(i16::from_be_bytes(array(rest)?)),
        4 => HeaderValue::Int(i32::from_be_bytes(array(rest)?)),
        5 => HeaderValue::Long(i64::from_be_bytes(array(rest)?)),
        6 | 7 => {
            let len = u16::from_be_bytes(array(rest)?) as usize;
            let bytes = take(rest, len)?;
            if kind == 6 {
                HeaderValue::Bytes(bytes)
            } else {
                HeaderValue::String(std::str::from_utf8(bytes).ok()?)
            }
        }
        8 => HeaderValue::Timestamp(i64::from_be_bytes(array(rest)?)),
        9 => HeaderValue::Uuid(array(rest)?),
        _ => return None,
    };
    Some((name, value))
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<(&'a str, HeaderValue<'a>), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let mut rest = self.rest;
        match header(&mut rest) {
            Some(h) => {
                self.rest = rest;
                Some(Ok(h))
            }
            None => {
                self.rest = &[];
                Some(Err(()))
            }
        }
    }
}

/// One decoded message, borrowed from the decoder or the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub headers: Headers<'a>,
    pub payload: &'a [u8],
}

/// What went wrong with the framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message declared a length over the bound: skipped.
    #[error("event-stream message over the size bound")]
    TooLarge,
    /// A CRC mismatch, malformed headers or an impossible length.
    #[error("invalid event-stream message")]
    Invalid,
}

/// Prelude (12 bytes) + message CRC (4 bytes).
pub const OVERHEAD: usize = 16;
const PRELUDE: usize = 12;

/// Incremental event-stream decoder. See the module docs.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Bytes of the current, incomplete message.
    buf: Vec<u8>,
    /// Total length of the current message, once its prelude is read.
    total: usize,
    /// Bytes still to skip of an oversized message.
    skip: usize,
    /// The framing was lost: nothing more is read.
    dead: bool,
    messages: u64,
}

impl Decoder {
    /// A decoder that skips any message longer than `max_message` bytes
    /// (the whole message, prelude and CRCs included; at least 16).
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message: max_message.max(OVERHEAD),
            buf: Vec::new(),
            total: 0,
            skip: 0,
            dead: false,
            messages: 0,
        }
    }

    /// Messages decoded so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// True when the stream, if it ended now, would end inside a message.
    pub fn has_pending(&self) -> bool {
        !self.dead && (!self.buf.is_empty() || self.skip > 0)
    }

    /// True once the framing was lost.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Reads a prelude: `Ok(total)`.
    fn prelude(&self, p: &[u8]) -> Result<usize, FrameError> {
        let total = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        let headers = u32::from_be_bytes([p[4], p[5], p[6], p[7]]) as usize;
        let crc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        if crc32fast::hash(&p[..8]) != crc || total < OVERHEAD || headers > total - OVERHEAD {
            return Err(FrameError::Invalid);
        }
        if total > self.max_message {
            return Err(FrameError::TooLarge);
        }
        Ok(total)
    }

    /// Feeds one chunk; `on` gets every complete message or framing error.
    pub fn feed(&mut self, mut chunk: &[u8], mut on: impl FnMut(Result<Message<'_>, FrameError>)) {
        while !chunk.is_empty() && !self.dead {
            if self.skip > 0 {
                let n = self.skip.min(chunk.len());
                self.skip -= n;
                chunk = &chunk[n..];
                continue;
            }
            if self.buf.is_empty() {
                // Whole messages straight from the chunk, without copying.
                if chunk.len() < PRELUDE {
                    self.buf.extend_from_slice(chunk);
                    return;
                }
                match self.prelude(&chunk[..PRELUDE]) {
                    Err(e) => {
                        self.fail(e, &chunk[..PRELUDE], &mut on);
                        chunk = &chunk[PRELUDE..];
                    }
                    Ok(total) if total <= chunk.len() => {
                        self.message(&chunk[..total], &mut on);
                        chunk = &chunk[total..];
                    }
                    Ok(total) => {
                        self.total = total;
                        self.buf.extend_from_slice(chunk);
                        return;
                    }
                }
                continue;
            }
            if self.buf.len() < PRELUDE {
                let n = (PRELUDE - self.buf.len()).min(chunk.len());
                self.buf.extend_from_slice(&chunk[..n]);
                chunk = &chunk[n..];
                if self.buf.len() < PRELUDE {
                    return;
                }
                match self.prelude(&self.buf[..PRELUDE]) {
                    Ok(total) => self.total = total,
                    Err(e) => {
                        let head = std::mem::take(&mut self.buf);
                        self.fail(e, &head, &mut on);
                        self.buf = head;
                        self.buf.clear();
                        continue;
                    }
                }
            }
            let n = (self.total - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.buf.len() == self.total {
                let buf = std::mem::take(&mut self.buf);
                self.message(&buf, &mut on);
                self.buf = buf;
                self.buf.clear();
            }
        }
    }

    /// A bad prelude (`prelude`: its 12 bytes).
    fn fail(
        &mut self,
        e: FrameError,
        prelude: &[u8],
        on: &mut impl FnMut(Result<Message<'_>, FrameError>),
    ) {
        on(Err(e));
        if e == FrameError::TooLarge {
            // The length is trustworthy (prelude CRC held): skip the message.
            let total = u32::from_be_bytes([prelude[0], prelude[1], prelude[2], prelude[3]]);
            self.skip = total as usize - PRELUDE;
        } else {
            self.dead = true;
            self.buf = Vec::new();
        }
    }

    /// A whole message (`msg.len()` == its total length, prelude checked).
    fn message(&mut self, msg: &[u8], on: &mut impl FnMut(Result<Message<'_>, FrameError>)) {
        let total = msg.len();
        let crc = u32::from_be_bytes([
            msg[total - 4],
            msg[total - 3],
            msg[total - 2],
            msg[total - 1],
        ]);
        if crc32fast::hash(&msg[..total - 4]) != crc {
            return on(Err(FrameError::Invalid));
        }
        let headers_len = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]) as usize;
        let headers = Headers {
            raw: &msg[PRELUDE..PRELUDE + headers_len],
        };
        if headers.iter().any(|h| h.is_err()) {
            return on(Err(FrameError::Invalid));
        }
        self.messages += 1;
        on(Ok(Message {
            headers,
            payload: &msg[PRELUDE + headers_len..total - 4],
        }));
    }
}

/// Encodes one message (the inverse of [`Decoder`]): for tests, fuzz
/// oracles and seeds. Names longer than 255 bytes and byte/string values
/// longer than 65535 bytes are cut to fit.
pub fn encode(headers: &[(&str, HeaderValue<'_>)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(255)];
        h.push(name.len() as u8);
        h.extend_from_slice(name);
        match *value {
            HeaderValue::Bool(true) => h.push(0),
            HeaderValue::Bool(false) => h.push(1),
            HeaderValue::Byte(v) => {
                h.push(2);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Short(v) => {
                h.push(3);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int(v) => {
                h.push(4);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Long(v) => {
                h.push(5);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Bytes(b) => {
                let b = &b[..b.len().min(u16::MAX as usize)];
                h.push(6);
                h.extend_from_slice(&(b.len() as u16).to_be_bytes());
                h.extend_from_slice(b);
            }
            HeaderValue::String(s) => {
                let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
                h.push(7);
                h.extend_from_slice(&(b.len() as u16).to_be_bytes());
                h.extend_from_slice(b);
            }
            HeaderValue::Timestamp(v) => {
                h.push(8);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Uuid(u) => {
                h.push(9);
                h.extend_from_slice(&u);
            }
        }
    }
    let total = OVERHEAD + h.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the decoder reported: messages as (headers, payload), errors.
    #[derive(Debug, Clone, PartialEq)]
    enum Got {
        Msg(Vec<(String, String)>, Vec<u8>),
        Err(FrameError),
    }

    fn run(chunks: &[&[u8]], max: usize) -> (Vec<Got>, bool) {
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, |m| {
                out.push(match m {
                    Ok(m) => Got::Msg(
                        m.headers
                            .iter()
                            .map(|h| {
                                let (n, v) = h.unwrap();
                                (n.to_owned(), format!("{v:?}"))
                            })
                            .collect(),
                        m.payload.to_vec(),
                    ),
                    Err(e) => Got::Err(e),
                })
            });
        }
        (out, d.has_pending())
    }

    fn every_header_type() -> Vec<u8> {
        encode(
            &[
                (":t", HeaderValue::Bool(true)),
                (":f", HeaderValue::Bool(false)),
                ("b", HeaderValue::Byte(-2)),
                ("s", HeaderValue::Short(-300)),
                ("i", HeaderValue::Int(70_000)),
                ("l", HeaderValue::Long(-5_000_000_000)),
                ("ba", HeaderValue::Bytes(b"\x00\xff")),
                (":event-type", HeaderValue::String("contentBlockDelta")),
                ("ts", HeaderValue::Timestamp(1_700_000_000_000)),
                ("u", HeaderValue::Uuid([7; 16])),
            ],
            br#"{"delta":{"text":"hi"}}"#,
        )
    }

    fn event(name: &str, payload: &str) -> Vec<u8> {
        encode(
            &[
                (":event-type", HeaderValue::String(name)),
                (":content-type", HeaderValue::String("application/json")),
                (":message-type", HeaderValue::String("event")),
            ],
            payload.as_bytes(),
        )
    }

    #[test]
    fn known_message_decodes() {
        // `:event-type: a`, payload `{}`, CRCs computed independently.
        let headers_len: u32 = 1 + 11 + 1 + 2 + 1;
        let total: u32 = 16 + headers_len + 2;
        let mut m = Vec::new();
        m.extend_from_slice(&total.to_be_bytes());
        m.extend_from_slice(&headers_len.to_be_bytes());
        m.extend_from_slice(&crc32fast::hash(&m).to_be_bytes());
        m.push(11);
        m.extend_from_slice(b":event-type");
        m.extend_from_slice(&[7, 0, 1, b'a']);
        m.extend_from_slice(b"{}");
        m.extend_from_slice(&crc32fast::hash(&m).to_be_bytes());
        assert_eq!(m, event_bytes_a());
        let (got, pending) = run(&[&m], 1 << 20);
        assert!(!pending);
        assert_eq!(
            got,
            vec![Got::Msg(
                vec![(":event-type".into(), "String(\"a\")".into())],
                b"{}".to_vec()
            )]
        );
    }

    fn event_bytes_a() -> Vec<u8> {
        encode(&[(":event-type", HeaderValue::String("a"))], b"{}")
    }

    #[test]
    fn every_split_gives_the_same_messages() {
        let first = every_header_type();
        let second = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        let third = encode(&[], b"");
        let stream = [first.clone(), second.clone(), third].concat();
        let (want, pending) = run(&[&stream], 1 << 20);
        assert!(!pending);
        assert_eq!(want.len(), 3);
        assert!(want.iter().all(|g| matches!(g, Got::Msg(..))));
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let (a, rest) = stream.split_at(i);
                let (b, c) = rest.split_at(j - i);
                assert_eq!(run(&[a, b, c], 1 << 20), (want.clone(), false), "{i}/{j}");
            }
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes, 1 << 20).0, want);
        // Cut anywhere but between messages: pending.
        let boundaries = [first.len(), first.len() + second.len()];
        for i in 1..stream.len() {
            let (_, pending) = run(&[&stream[..i]], 1 << 20);
            assert_eq!(pending, !boundaries.contains(&i), "cut at {i}");
        }
    }

    #[test]
    fn message_crc_mismatch_drops_only_that_message() {
        let mut bad = event("a", "{}");
        let n = bad.len();
        bad[n - 6] ^= 1; // payload byte: the message CRC no longer holds
        let good = event("b", "{}");
        let stream = [bad, good.clone()].concat();
        for split in [1, 5, 13, stream.len()] {
            let chunks: Vec<&[u8]> = stream.chunks(split).collect();
            let (got, pending) = run(&chunks, 1 << 20);
            assert!(!pending);
            assert_eq!(got.len(), 2, "split {split}");
            assert_eq!(got[0], Got::Err(FrameError::Invalid));
            assert!(matches!(&got[1], Got::Msg(h, _) if h[0].1 == "String(\"b\")"));
        }
    }

    #[test]
    fn prelude_crc_mismatch_loses_the_framing() {
        let mut bad = event("a", "{}");
        bad[9] ^= 0x40;
        let stream = [bad, event("b", "{}")].concat();
        for split in [1, 7, stream.len()] {
            let chunks: Vec<&[u8]> = stream.chunks(split).collect();
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            for c in &chunks {
                d.feed(c, |m| got.push(m.map(|m| m.payload.to_vec())));
            }
            assert_eq!(got, vec![Err(FrameError::Invalid)], "split {split}");
            assert!(d.is_dead() && !d.has_pending());
        }
        // An impossible length (< 16) with a valid prelude CRC.
        let mut p = 8u32.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&p);
        p.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(run(&[&p], 1 << 20).0, vec![Got::Err(FrameError::Invalid)]);
    }

    #[test]
    fn malformed_headers_are_invalid() {
        // Header type 10 does not exist; the CRCs are right.
        let mut h = vec![1, b'x', 10];
        let total = (16 + h.len()) as u32;
        let mut m = total.to_be_bytes().to_vec();
        m.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let crc = crc32fast::hash(&m);
        m.extend_from_slice(&crc.to_be_bytes());
        m.append(&mut h);
        let crc = crc32fast::hash(&m);
        m.extend_from_slice(&crc.to_be_bytes());
        let stream = [m, event("ok", "{}")].concat();
        let (got, _) = run(&[&stream], 1 << 20);
        assert_eq!(got[0], Got::Err(FrameError::Invalid));
        assert!(matches!(&got[1], Got::Msg(..)));
    }

    #[test]
    fn oversized_message_is_skipped_unbuffered() {
        let big = event("big", &format!("{{\"x\":\"{}\"}}", "y".repeat(500)));
        let small = event("small", "{}");
        let stream = [small.clone(), big, small.clone()].concat();
        for split in [1, 3, 16, 100, stream.len()] {
            let chunks: Vec<&[u8]> = stream.chunks(split).collect();
            let mut d = Decoder::new(200);
            let mut got = Vec::new();
            let mut peak = 0;
            for c in &chunks {
                d.feed(c, |m| got.push(m.map(|m| m.payload.len())));
                peak = peak.max(d.buf.len());
            }
            assert_eq!(
                got,
                vec![Ok(2), Err(FrameError::TooLarge), Ok(2)],
                "split {split}"
            );
            assert!(peak <= 200, "buffered {peak}");
            assert!(!d.has_pending());
        }
        // Cut inside the skipped message: still pending.
        let mut d = Decoder::new(200);
        d.feed(&stream[..small.len() + 300], |_| {});
        assert!(d.has_pending());
    }
}
