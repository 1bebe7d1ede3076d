//! Passive, incremental WebSocket frame parser (RFC 6455 §5).
//!
//! The proxy relays a WebSocket session's bytes as they arrive and feeds a
//! copy of each direction to one [`FrameParser`]; the parser never holds
//! the relay back. It is fed arbitrary chunks (a frame header may be split
//! at any byte) and reports whole *messages*: the payloads of a data frame
//! and its continuation frames, unmasked and joined. Control frames (ping,
//! pong, close) may arrive between the fragments of a message and are
//! reported on their own.
//!
//! Bounded: a message whose payload grows past `max_message` is not kept —
//! its bytes are skipped as they pass and it is reported as
//! [`Event::Skipped`] (the relay forwards it all the same). Control frame
//! payloads are at most 125 bytes by the RFC.
//!
//! Extensions: egret removes `Sec-WebSocket-Extensions` from the upgrade
//! request it forwards, so sessions it relays are never compressed
//! (`permessage-deflate`); a frame with a reserved bit set is a protocol
//! error here, and parsing of that direction stops (relaying does not).
//!
//! Every frame's wire size (header and payload) is counted into the event
//! that reports it, so the bytes of a message (all its frames) and of the
//! control frames add up to what crossed the wire.

/// A data message's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
}

/// Why a direction stopped being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A reserved opcode (3–7, 11–15).
    #[error("reserved_opcode")]
    ReservedOpcode,
    /// RSV1–3 set: an extension egret did not negotiate.
    #[error("reserved_bits")]
    ReservedBits,
    /// A control frame longer than 125 bytes, or fragmented.
    #[error("bad_control_frame")]
    BadControlFrame,
    /// A continuation frame with no message started, or a new data frame
    /// while a message is still open.
    #[error("bad_fragmentation")]
    BadFragmentation,
    /// A 64-bit length with its most significant bit set.
    #[error("bad_length")]
    BadLength,
}

impl FrameError {
    /// The value of `egret.parse.error`.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameError::ReservedOpcode => "reserved_opcode",
            FrameError::ReservedBits => "reserved_bits",
            FrameError::BadControlFrame => "bad_control_frame",
            FrameError::BadFragmentation => "bad_fragmentation",
            FrameError::BadLength => "bad_length",
        }
    }
}

/// What one fed chunk completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole data message, unmasked. `wire`: the bytes of all its frames.
    Message {
        kind: Kind,
        data: &'a [u8],
        wire: u64,
    },
    /// A data message larger than the parser's cap: relayed, not kept.
    Skipped { kind: Kind, len: u64, wire: u64 },
    /// Ping (9) or pong (10).
    Ping { pong: bool, wire: u64 },
    /// A close frame: its status code when it carried one.
    Close { code: Option<u16>, wire: u64 },
    /// The stream broke the framing rules: nothing after this is parsed.
    Error(FrameError),
}

/// Where the parser is within the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a frame header (2 to 14 bytes).
    Header,
    /// Reading a frame's payload.
    Payload,
    /// A framing error: everything else is ignored.
    Dead,
}

/// The header of the frame being read.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Payload bytes read so far.
    read: u64,
    /// Header size on the wire.
    header: u64,
}

/// The data message being assembled.
#[derive(Debug, Default)]
struct Message {
    kind: Option<Kind>,
    /// Payload bytes seen (kept or not).
    len: u64,
    wire: u64,
    /// Past the cap: payload is no longer kept.
    skipping: bool,
}

/// One direction's incremental frame parser. See the module docs.
#[derive(Debug)]
pub struct FrameParser {
    max_message: usize,
    state: State,
    hdr: [u8; 14],
    hdr_len: usize,
    frame: Frame,
    msg: Message,
    /// The open message's payload (up to `max_message`).
    data: Vec<u8>,
    /// The current control frame's payload (at most 125 bytes).
    control: Vec<u8>,
    frames: u64,
}

impl FrameParser {
    /// A parser that keeps messages up to `max_message` payload bytes.
    pub fn new(max_message: usize) -> FrameParser {
        FrameParser {
            max_message,
            state: State::Header,
            hdr: [0; 14],
            hdr_len: 0,
            frame: Frame::default(),
            msg: Message::default(),
            data: Vec::new(),
            control: Vec::new(),
            frames: 0,
        }
    }

    /// Frames whose end has been read.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// True after a framing error: the rest of the stream is not parsed.
    pub fn dead(&self) -> bool {
        self.state == State::Dead
    }

    /// True when the stream stopped inside a frame or a fragmented message.
    pub fn has_pending(&self) -> bool {
        self.state != State::Dead
            && (self.hdr_len > 0 || self.state == State::Payload || self.msg.kind.is_some())
    }

    /// Feeds the next bytes of the direction; `on` gets every event they
    /// complete, in order.
    pub fn feed(&mut self, mut buf: &[u8], mut on: impl FnMut(Event<'_>)) {
        while !buf.is_empty() {
            match self.state {
                State::Dead => return,
                State::Header => {
                    let used = self.header_bytes(buf);
                    buf = &buf[used..];
                    match self.try_header() {
                        Ok(true) => {
                            if let Some(e) = self.begin_frame() {
                                self.state = State::Dead;
                                on(Event::Error(e));
                                return;
                            }
                            if self.frame.len == 0 {
                                self.end_frame(&mut on);
                            } else {
                                self.state = State::Payload;
                            }
                        }
                        Ok(false) => {}
                        Err(e) => {
                            self.state = State::Dead;
                            on(Event::Error(e));
                            return;
                        }
                    }
                }
                State::Payload => {
                    let left = self.frame.len - self.frame.read;
                    let take = (left.min(buf.len() as u64)) as usize;
                    self.payload(&buf[..take]);
                    buf = &buf[take..];
                    if self.frame.read == self.frame.len {
                        self.end_frame(&mut on);
                    }
                }
            }
        }
    }

    /// Copies header bytes from `buf` up to what the header needs so far
    /// (2 bytes, then the length and mask its second byte announces).
    fn header_bytes(&mut self, buf: &[u8]) -> usize {
        let need = self.header_len().unwrap_or(2);
        let take = need.saturating_sub(self.hdr_len).min(buf.len());
        self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&buf[..take]);
        self.hdr_len += take;
        take
    }

    /// The full header size, once its first two bytes are in.
    fn header_len(&self) -> Option<usize> {
        if self.hdr_len < 2 {
            return None;
        }
        let ext = match self.hdr[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    /// Decodes the header once it is whole: `Ok(true)` then.
    fn try_header(&mut self) -> Result<bool, FrameError> {
        let Some(n) = self.header_len() else {
            return Ok(false);
        };
        if self.hdr_len < n {
            return Ok(false);
        }
        let h = &self.hdr;
        let len7 = h[1] & 0x7f;
        let (len, at) = match len7 {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let l = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if l >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                (l, 10)
            }
            l => (u64::from(l), 2),
        };
        let mask = (h[1] & 0x80 != 0).then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        self.frame = Frame {
            fin: h[0] & 0x80 != 0,
            opcode: h[0] & 0x0f,
            mask,
            len,
            read: 0,
            header: n as u64,
        };
        if h[0] & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        self.hdr_len = 0;
        Ok(true)
    }

    /// Checks the frame against the message state and opens a message.
    fn begin_frame(&mut self) -> Option<FrameError> {
        let f = self.frame;
        match f.opcode {
            0x8..=0xa => {
                if !f.fin || f.len > 125 {
                    return Some(FrameError::BadControlFrame);
                }
                self.control.clear();
            }
            0x0 => {
                if self.msg.kind.is_none() {
                    return Some(FrameError::BadFragmentation);
                }
                self.msg.wire += f.header;
            }
            0x1 | 0x2 => {
                if self.msg.kind.is_some() {
                    return Some(FrameError::BadFragmentation);
                }
                self.msg = Message {
                    kind: Some(if f.opcode == 1 {
                        Kind::Text
                    } else {
                        Kind::Binary
                    }),
                    len: 0,
                    wire: f.header,
                    skipping: false,
                };
                self.data.clear();
            }
            _ => return Some(FrameError::ReservedOpcode),
        }
        None
    }

    /// Payload bytes of the current frame, unmasked into the right buffer.
    fn payload(&mut self, chunk: &[u8]) {
        let f = &mut self.frame;
        let start = f.read;
        f.read += chunk.len() as u64;
        let control = f.opcode >= 0x8;
        if !control {
            self.msg.len += chunk.len() as u64;
            self.msg.wire += chunk.len() as u64;
            if self.msg.skipping {
                return;
            }
            if self.msg.len > self.max_message as u64 {
                self.msg.skipping = true;
                self.data = Vec::new();
                return;
            }
        }
        let out = if control {
            &mut self.control
        } else {
            &mut self.data
        };
        let at = out.len();
        out.extend_from_slice(chunk);
        if let Some(key) = f.mask {
            for (i, b) in out[at..].iter_mut().enumerate() {
                *b ^= key[((start + i as u64) % 4) as usize];
            }
        }
    }

    /// The current frame is read: reports what it completed.
    fn end_frame(&mut self, on: &mut impl FnMut(Event<'_>)) {
        self.frames += 1;
        self.state = State::Header;
        let f = self.frame;
        let wire = f.header + f.len;
        match f.opcode {
            0x8 => {
                let code = (self.control.len() >= 2)
                    .then(|| u16::from_be_bytes([self.control[0], self.control[1]]));
                on(Event::Close { code, wire });
            }
            0x9 | 0xa => on(Event::Ping {
                pong: f.opcode == 0xa,
                wire,
            }),
            _ => {
                if !f.fin {
                    return;
                }
                let msg = std::mem::take(&mut self.msg);
                let kind = msg.kind.unwrap_or(Kind::Binary);
                if msg.skipping {
                    on(Event::Skipped {
                        kind,
                        len: msg.len,
                        wire: msg.wire,
                    });
                } else {
                    on(Event::Message {
                        kind,
                        data: &self.data,
                        wire: msg.wire,
                    });
                }
                self.data.clear();
                if self.data.capacity() > 64 << 10 {
                    // A large message does not keep its buffer for the
                    // rest of the session.
                    self.data = Vec::new();
                }
            }
        }
    }
}

/// Builds one frame as a peer would send it (tests, fuzzing seeds).
#[cfg(any(test, fuzzing))]
pub fn frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of an event, for comparisons.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Msg(Kind, Vec<u8>, u64),
        Skipped(Kind, u64, u64),
        Ping(bool, u64),
        Close(Option<u16>, u64),
        Error(FrameError),
    }

    fn parse_chunks(p: &mut FrameParser, chunks: &[&[u8]]) -> Vec<Ev> {
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| {
                out.push(match e {
                    Event::Message { kind, data, wire } => Ev::Msg(kind, data.to_vec(), wire),
                    Event::Skipped { kind, len, wire } => Ev::Skipped(kind, len, wire),
                    Event::Ping { pong, wire } => Ev::Ping(pong, wire),
                    Event::Close { code, wire } => Ev::Close(code, wire),
                    Event::Error(e) => Ev::Error(e),
                })
            });
        }
        out
    }

    fn parse(max: usize, wire: &[u8]) -> Vec<Ev> {
        parse_chunks(&mut FrameParser::new(max), &[wire])
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A session's worth of frames: masked and unmasked, 7/16/64-bit
    /// lengths, a fragmented message with a ping in the middle, a close.
    fn session() -> (Vec<u8>, Vec<Ev>) {
        let big = vec![b'a'; 300];
        let huge = vec![b'z'; 70_000];
        let parts: Vec<(Vec<u8>, Option<Ev>)> = vec![
            (
                frame(true, 1, Some(KEY), br#"{"type":"response.create"}"#),
                Some(Ev::Msg(
                    Kind::Text,
                    br#"{"type":"response.create"}"#.to_vec(),
                    32,
                )),
            ),
            (
                frame(true, 1, None, &big),
                Some(Ev::Msg(Kind::Text, big.clone(), 304)),
            ),
            (
                frame(true, 2, Some(KEY), &huge),
                Some(Ev::Msg(Kind::Binary, huge.clone(), 70_000 + 14)),
            ),
            (frame(false, 1, Some(KEY), b"{\"type\":"), None),
            (frame(true, 9, Some(KEY), b"hi"), Some(Ev::Ping(false, 8))),
            (frame(false, 0, Some(KEY), b"\"x\""), None),
            (frame(true, 0xa, None, b""), Some(Ev::Ping(true, 2))),
            (
                frame(true, 0, Some(KEY), b"}"),
                Some(Ev::Msg(
                    Kind::Text,
                    b"{\"type\":\"x\"}".to_vec(),
                    14 + 9 + 7,
                )),
            ),
            (
                frame(true, 1, None, b""),
                Some(Ev::Msg(Kind::Text, vec![], 2)),
            ),
            (
                frame(true, 8, Some(KEY), &[0x03, 0xe8, b'o', b'k']),
                Some(Ev::Close(Some(1000), 10)),
            ),
        ];
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (bytes, ev) in parts {
            wire.extend_from_slice(&bytes);
            want.extend(ev);
        }
        (wire, want)
    }

    #[test]
    fn a_session_parses_whole() {
        let (wire, want) = session();
        assert_eq!(parse(1 << 20, &wire), want);
        // Wire sizes add up to every byte.
        let total: u64 = want
            .iter()
            .map(|e| match e {
                Ev::Msg(_, _, w) | Ev::Skipped(_, _, w) | Ev::Ping(_, w) | Ev::Close(_, w) => *w,
                Ev::Error(_) => 0,
            })
            .sum();
        assert_eq!(total, wire.len() as u64);
    }

    #[test]
    fn a_split_at_every_byte_boundary_parses_identically() {
        let (wire, want) = session();
        // Every single split point over the small frames, and a stride
        // through the 64-bit frame.
        for cut in (0..=wire.len()).filter(|c| *c < 400 || c % 997 == 0 || *c > wire.len() - 80) {
            let got = parse_chunks(
                &mut FrameParser::new(1 << 20),
                &[&wire[..cut], &wire[cut..]],
            );
            assert_eq!(got, want, "split at {cut}");
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(parse_chunks(&mut FrameParser::new(1 << 20), &bytes), want);
    }

    #[test]
    fn masking_uses_the_key_across_chunks() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let wire = frame(true, 2, Some([1, 2, 3, 4]), &payload);
        for size in [1, 3, 5, 7, 333] {
            let chunks: Vec<&[u8]> = wire.chunks(size).collect();
            let got = parse_chunks(&mut FrameParser::new(4096), &chunks);
            assert_eq!(
                got,
                vec![Ev::Msg(Kind::Binary, payload.clone(), 1008)],
                "{size}"
            );
        }
    }

    #[test]
    fn oversized_messages_are_skipped_and_parsing_goes_on() {
        let mut wire = frame(false, 1, Some(KEY), &[b'x'; 60]);
        wire.extend(frame(true, 0, Some(KEY), &[b'y'; 60]));
        wire.extend(frame(true, 1, Some(KEY), b"after"));
        let got = parse(100, &wire);
        assert_eq!(
            got,
            vec![
                Ev::Skipped(Kind::Text, 120, 132),
                Ev::Msg(Kind::Text, b"after".to_vec(), 11),
            ]
        );
        // Exactly at the cap: kept.
        assert_eq!(
            parse(5, &frame(true, 1, None, b"12345")),
            vec![Ev::Msg(Kind::Text, b"12345".to_vec(), 7)]
        );
        // The parser never kept the oversized payload.
        let mut p = FrameParser::new(100);
        p.feed(&frame(true, 2, None, &vec![0u8; 1 << 20]), |_| {});
        assert!(p.data.capacity() <= 100, "{}", p.data.capacity());
    }

    #[test]
    fn framing_errors_stop_parsing() {
        for (wire, err) in [
            (frame(true, 3, None, b""), FrameError::ReservedOpcode),
            (frame(true, 0, None, b"x"), FrameError::BadFragmentation),
            (frame(false, 9, None, b""), FrameError::BadControlFrame),
            ([0xc1u8, 0x00].to_vec(), FrameError::ReservedBits),
            (
                [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0].to_vec(),
                FrameError::BadLength,
            ),
        ] {
            let mut p = FrameParser::new(100);
            let mut all = wire.clone();
            all.extend(frame(true, 1, None, b"never"));
            assert_eq!(parse_chunks(&mut p, &[&all]), vec![Ev::Error(err)]);
            assert!(p.dead());
        }
        // A control frame of 126 bytes.
        let mut w = vec![0x89, 126, 0, 126];
        w.extend([0u8; 126]);
        assert_eq!(
            parse(1000, &w),
            vec![Ev::Error(FrameError::BadControlFrame)]
        );
        // A new data frame inside an open message.
        let mut w = frame(false, 1, None, b"a");
        w.extend(frame(true, 1, None, b"b"));
        assert_eq!(
            parse(1000, &w),
            vec![Ev::Error(FrameError::BadFragmentation)]
        );
    }

    #[test]
    fn close_without_a_code_and_pending_state() {
        assert_eq!(
            parse(10, &frame(true, 8, None, b"")),
            vec![Ev::Close(None, 2)]
        );
        let mut p = FrameParser::new(10);
        assert!(!p.has_pending());
        let w = frame(true, 1, None, b"hello");
        p.feed(&w[..3], |_| {});
        assert!(p.has_pending());
        p.feed(&w[3..], |_| {});
        assert!(!p.has_pending());
        p.feed(&frame(false, 1, None, b"he"), |_| {});
        assert!(p.has_pending(), "inside a fragmented message");
        assert_eq!(p.frames(), 2);
    }
}
