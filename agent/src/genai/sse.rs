//! Incremental `text/event-stream` parser (WHATWG HTML "server-sent events",
//! §9.2.6 "Interpreting an event stream").
//!
//! Fed arbitrary chunks; never needs the whole stream. Handles `\n`, `\r\n`
//! and `\r` line endings (also when a `\r\n` pair is split across chunks),
//! multi-line `data:`, comments, `event:` names, `id:` and `retry:` (both
//! ignored: nothing here reconnects), and a leading UTF-8 BOM.
//!
//! State is bounded: the current line and the current event's data never
//! grow past [`SseParser::new`]'s `max_event_bytes`. An event that would is
//! dropped whole (the parser skips to its terminating blank line) and
//! [`SseParser::overflowed`] turns true; the events after it parse normally.
//!
//! Allocation: the line, data and event-name buffers are reused across
//! events, so a steady stream allocates nothing per chunk once they reached
//! their working size.

/// One dispatched event, borrowed from the parser's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` name; `"message"` when the event had none.
    pub event: &'a str,
    /// The concatenated `data:` lines, joined with `\n`, without the final
    /// newline.
    pub data: &'a [u8],
}

/// What the parser reports at every blank line (the end of a block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block<'a> {
    /// Offset in the chunk just passed to [`SseParser::feed`] right after
    /// the blank line's terminator (for `\r\n`, after the `\r` when the
    /// `\n` is still to come). At [`SseParser::finish`] this is 0.
    pub end: usize,
    /// The event the block dispatched; `None` for blocks without `data:`
    /// (comments, keep-alives) and for dropped oversized events.
    pub event: Option<SseEvent<'a>>,
}

/// Incremental SSE parser. See the module docs.
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// Bytes of the current, not yet terminated line (only when the line
    /// spans chunks).
    line: Vec<u8>,
    /// `data:` values of the current event, each followed by `\n`.
    data: Vec<u8>,
    /// `event:` name of the current event (empty: `message`).
    event: String,
    /// The current event has at least one `data:` line.
    has_data: bool,
    /// The previous chunk ended in `\r`: a leading `\n` belongs to it.
    skip_lf: bool,
    /// Skipping the rest of an oversized event until its blank line.
    discarding: bool,
    /// Skipping the rest of an oversized line (inside `discarding`).
    discarding_line: bool,
    /// Still at the very start of the stream (BOM check pending).
    at_start: bool,
    /// Bytes of a possible BOM seen so far at the start.
    bom_seen: u8,
    overflowed: bool,
    events: u64,
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

impl SseParser {
    /// A parser that drops any event (or line) larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            max_event_bytes: max_event_bytes.max(1),
            line: Vec::new(),
            data: Vec::new(),
            event: String::new(),
            has_data: false,
            skip_lf: false,
            discarding: false,
            discarding_line: false,
            at_start: true,
            bom_seen: 0,
            overflowed: false,
            events: 0,
        }
    }

    /// True once an event larger than the bound was dropped.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Number of events dispatched so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// True when bytes of an unterminated line or event are pending: the
    /// stream, if it ended now, would have been cut mid-event.
    pub fn has_pending(&self) -> bool {
        !self.line.is_empty() || self.has_data || self.discarding_line
    }

    /// Feeds one chunk; `on_block` is called at every blank line.
    pub fn feed(&mut self, chunk: &[u8], mut on_block: impl FnMut(Block<'_>)) {
        let mut pos = 0;
        if self.at_start {
            // Strip one leading UTF-8 BOM, even when split across chunks.
            while pos < chunk.len() && (self.bom_seen as usize) < BOM.len() {
                if chunk[pos] == BOM[self.bom_seen as usize] {
                    self.bom_seen += 1;
                    pos += 1;
                } else {
                    // Not a BOM after all: replay the bytes we swallowed.
                    let seen = self.bom_seen as usize;
                    self.at_start = false;
                    self.bom_seen = 0;
                    if seen > 0 {
                        self.take_partial(&BOM[..seen]);
                    }
                    break;
                }
            }
            if (self.bom_seen as usize) == BOM.len() {
                self.at_start = false;
                self.bom_seen = 0;
            }
            if self.at_start && pos >= chunk.len() {
                return;
            }
        }
        // Only a byte can tell whether the `\r` was half of a `\r\n`: an
        // empty chunk leaves the question open.
        if self.skip_lf && pos < chunk.len() {
            self.skip_lf = false;
            if chunk[pos] == b'\n' {
                pos += 1;
            }
        }
        while pos < chunk.len() {
            let rest = &chunk[pos..];
            match memchr::memchr2(b'\n', b'\r', rest) {
                None => {
                    self.take_partial(rest);
                    return;
                }
                Some(i) => {
                    let terminator = rest[i];
                    let mut next = pos + i + 1;
                    if terminator == b'\r' {
                        if next < chunk.len() {
                            if chunk[next] == b'\n' {
                                next += 1;
                            }
                        } else {
                            self.skip_lf = true;
                        }
                    }
                    let line_part = &rest[..i];
                    if self.line.is_empty() && !self.discarding_line {
                        // The bound `take_partial` applies to a line that
                        // spans chunks, so that chunking never matters.
                        if line_part.len() + self.data.len() > self.max_event_bytes {
                            self.overflow();
                        } else {
                            self.process_line(line_part, next, &mut on_block);
                        }
                    } else {
                        self.take_partial(line_part);
                        let line = std::mem::take(&mut self.line);
                        let was_discarding_line = self.discarding_line;
                        self.discarding_line = false;
                        // After an oversized line only its end matters: the
                        // event stays dropped until its blank line.
                        if !was_discarding_line {
                            self.process_line(&line, next, &mut on_block);
                        }
                        self.line = line;
                        self.line.clear();
                    }
                    pos = next;
                }
            }
        }
    }

    /// Ends the stream. Per the spec an unterminated event is discarded;
    /// egret is lenient and dispatches it when it has data (a server that
    /// omits the final blank line still gets its last event counted). The
    /// caller decides, from [`Self::has_pending`] before this call, whether
    /// that counts as truncation.
    pub fn finish(&mut self, mut on_block: impl FnMut(Block<'_>)) {
        if self.at_start && self.bom_seen > 0 {
            let seen = self.bom_seen as usize;
            self.at_start = false;
            self.bom_seen = 0;
            self.take_partial(&BOM[..seen]);
        }
        if !self.line.is_empty() && !self.discarding_line {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, 0, &mut on_block);
            self.line = line;
        }
        self.line.clear();
        self.discarding_line = false;
        self.skip_lf = false;
        self.process_line(b"", 0, &mut on_block);
    }

    /// Appends part of a line that continues in the next chunk.
    fn take_partial(&mut self, part: &[u8]) {
        if self.discarding_line {
            return;
        }
        if self.line.len() + part.len() + self.data.len() > self.max_event_bytes {
            self.overflow();
            self.line.clear();
            self.discarding_line = true;
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.discarding = true;
        self.data.clear();
        self.has_data = false;
    }

    fn process_line(&mut self, line: &[u8], end: usize, on_block: &mut impl FnMut(Block<'_>)) {
        if line.is_empty() {
            self.dispatch(end, on_block);
            return;
        }
        if self.discarding {
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event_bytes {
                    self.overflow();
                    return;
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                // Event names are ASCII in every protocol we parse; a
                // non-UTF-8 name is kept lossily and simply never matches.
                match std::str::from_utf8(value) {
                    Ok(s) => self.event.push_str(s),
                    Err(_) => self.event.push_str(&String::from_utf8_lossy(value)),
                }
                if self.event.len() > self.max_event_bytes {
                    self.event.clear();
                    self.overflow();
                }
            }
            // `id`, `retry` and unknown fields: nothing to do for a tap.
            _ => {}
        }
    }

    fn dispatch(&mut self, end: usize, on_block: &mut impl FnMut(Block<'_>)) {
        if self.discarding || !self.has_data {
            self.discarding = false;
            self.data.clear();
            self.has_data = false;
            self.event.clear();
            on_block(Block { end, event: None });
            return;
        }
        // Remove the trailing `\n` added after the last data line.
        let data_len = self.data.len().saturating_sub(1);
        let name = if self.event.is_empty() {
            "message"
        } else {
            self.event.as_str()
        };
        self.events += 1;
        on_block(Block {
            end,
            event: Some(SseEvent {
                event: name,
                data: &self.data[..data_len],
            }),
        });
        self.data.clear();
        self.has_data = false;
        self.event.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]], max: usize) -> (Vec<(String, String)>, bool) {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |b| {
                if let Some(e) = b.event {
                    out.push((
                        e.event.to_owned(),
                        String::from_utf8_lossy(e.data).into_owned(),
                    ));
                }
            });
        }
        p.finish(|b| {
            if let Some(e) = b.event {
                out.push((
                    e.event.to_owned(),
                    String::from_utf8_lossy(e.data).into_owned(),
                ));
            }
        });
        (out, p.overflowed())
    }

    fn ev(name: &str, data: &str) -> (String, String) {
        (name.to_owned(), data.to_owned())
    }

    #[test]
    fn all_line_endings_and_fields() {
        let stream = b"event: a\ndata: 1\n\nevent:b\r\ndata:2\r\ndata:  3\r\n\r\n: comment\rdata\rid: 9\rretry: 10\r\rdata: last\n\n";
        let want = vec![
            ev("a", "1"),
            ev("b", "2\n 3"),
            ev("message", ""),
            ev("message", "last"),
        ];
        assert_eq!(collect(&[stream], 1024).0, want);
        // Every split point, and byte by byte.
        for i in 0..=stream.len() {
            let (a, b) = stream.split_at(i);
            assert_eq!(collect(&[a, b], 1024).0, want, "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(collect(&bytes, 1024).0, want);
    }

    #[test]
    fn bom_and_blocks_without_data() {
        let stream = b"\xEF\xBB\xBFdata: x\n\n: ping\n\nevent: only-name\n\n";
        let mut p = SseParser::new(1024);
        let mut blocks = Vec::new();
        for c in stream.chunks(1) {
            p.feed(c, |b| blocks.push(b.event.map(|e| e.data.to_vec())));
        }
        assert_eq!(blocks, vec![Some(b"x".to_vec()), None, None]);
        // A stream that merely starts with BOM-like bytes keeps them.
        assert_eq!(
            collect(&[b"\xEFdata: y\n\n"], 64).0,
            vec![] as Vec<(String, String)>
        );
    }

    #[test]
    fn block_end_offsets() {
        let mut p = SseParser::new(1024);
        let mut ends = Vec::new();
        p.feed(b"data: a\r\n\r\ndata: b\n\nda", |b| ends.push(b.end));
        assert_eq!(ends, vec![11, 20]);
        ends.clear();
        // `\r` ends the blank line; the `\n` comes in the next chunk.
        p.feed(b"ta: c\r\n\r", |b| ends.push(b.end));
        assert_eq!(ends, vec![8]);
        ends.clear();
        p.feed(b"\ndata: d\n\n", |b| ends.push(b.end));
        assert_eq!(ends, vec![10]);
    }

    #[test]
    fn oversized_event_is_dropped_and_flagged() {
        let big = format!("data: {}\n\n", "x".repeat(100));
        let stream = format!(
            "data: ok\n\n{big}data: a\ndata: {}\n\ndata: after\n\n",
            "y".repeat(100)
        );
        for split in [1usize, 7, 1000] {
            let chunks: Vec<&[u8]> = stream.as_bytes().chunks(split).collect();
            let (events, overflowed) = collect(&chunks, 32);
            assert!(overflowed);
            assert_eq!(
                events,
                vec![ev("message", "ok"), ev("message", "after")],
                "split {split}"
            );
        }
    }

    #[test]
    fn oversized_lines_overflow_whatever_the_chunking() {
        // Found by the `sse` fuzz target (minimized): a line over the bound
        // overflowed only when it arrived in pieces.
        let stream = b"\x00\xff\xff\xff\x07\r";
        let whole = collect(&[stream], 4);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(collect(&bytes, 4), whole);
        assert!(whole.1);
        // The same for a comment too long for the bound inside an event:
        // the event is dropped, at every split.
        let stream = format!(
            "data: ok\n\ndata: {{}}\n: {}\n\ndata: after\n\n",
            "x".repeat(40)
        );
        let want = (vec![ev("message", "ok"), ev("message", "after")], true);
        for i in 0..=stream.len() {
            let (a, b) = stream.as_bytes().split_at(i);
            assert_eq!(collect(&[a, b], 32), want, "split at {i}");
        }
    }

    #[test]
    fn empty_chunk_inside_crlf_is_no_blank_line() {
        // Found by the `sse` fuzz target (minimized: "\r", "", "\n" gave two
        // blocks): an empty chunk between the halves of a `\r\n` made the
        // `\n` a blank line of its own, which split events.
        let mut p = SseParser::new(64);
        let mut blocks = 0;
        for c in [&b"\r"[..], b"", b"\n"] {
            p.feed(c, |_| blocks += 1);
        }
        assert_eq!(blocks, 1);
        let chunks: [&[u8]; 4] = [b"data: a\r", b"", b"\ndata: b\r\n", b"\r\n"];
        assert_eq!(collect(&chunks, 64).0, vec![ev("message", "a\nb")]);
    }

    #[test]
    fn unterminated_event_is_pending_and_dispatched_at_finish() {
        let mut p = SseParser::new(64);
        p.feed(b"data: {\"a\":1}\n", |_| panic!("no blank line yet"));
        assert!(p.has_pending());
        let mut got = None;
        p.finish(|b| {
            if let Some(e) = b.event {
                got = Some(e.data.to_vec());
            }
        });
        assert_eq!(got.as_deref(), Some(&b"{\"a\":1}"[..]));
        let mut p = SseParser::new(64);
        p.feed(b"data: {\"a\"", |_| {});
        assert!(p.has_pending());
    }
}
