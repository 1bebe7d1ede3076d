//! A stream wrapper counting the bytes that cross it, for the L4 side of a
//! transaction as the proxy sees it (downstream = sandbox leg, upstream =
//! provider leg).
//!
//! It also marks where exchanges meet on the wire: when an exchange ends
//! the connection *arms* its counts, and the next read that returns bytes
//! records the position just before them — the first byte of the next
//! request (or of the sandbox's TLS close, or its end of stream), with every
//! byte of the previous response already written. Those marks are the exact boundaries of the
//! per-transaction L4 windows (see `proxy::http`).
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from and written to one stream.
#[derive(Debug, Default)]
pub struct ByteCounts {
    pub read: AtomicU64,
    pub written: AtomicU64,
    /// `id + 1` of the exchange whose end is waiting for the next read; 0
    /// when none is.
    armed: AtomicU64,
    /// The last boundary recorded: (exchange id, read, written).
    mark: Mutex<Option<(u64, u64, u64)>>,
    /// Read position where the sandbox's TLS handshake flight ended (see
    /// [`HandshakeEnd`]); 0 until known.
    tls_end: AtomicU64,
}

impl ByteCounts {
    /// (read, written) now.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }

    /// Exchange `id` has ended: the next read with bytes marks its end.
    pub fn arm(&self, id: u64) {
        self.armed.store(id + 1, Ordering::Release);
    }

    /// Where exchange `id` ended on the wire, (read, written), once the
    /// read after it happened.
    pub fn mark(&self, id: u64) -> Option<(u64, u64)> {
        let m = self.mark.lock().unwrap_or_else(|p| p.into_inner());
        m.and_then(|(mid, r, w)| (mid == id).then_some((r, w)))
    }

    /// Where the TLS handshake ended, (read, written), once it completed:
    /// the end of the sandbox's Finished record, and everything the agent
    /// wrote up to now (its flight and session tickets). Falls back to the
    /// bytes read so far if the records could not be followed.
    pub fn handshake_end(&self) -> (u64, u64) {
        let (r, w) = self.snapshot();
        match self.tls_end.load(Ordering::Acquire) {
            0 => (r, w),
            e => (e.min(r), w),
        }
    }

    /// Called with the read position before a read that returned bytes.
    #[inline]
    fn on_read(&self, before: u64) {
        if self.armed.load(Ordering::Relaxed) == 0 {
            return;
        }
        let armed = self.armed.swap(0, Ordering::AcqRel);
        if armed != 0 {
            let written = self.written.load(Ordering::Acquire);
            *self.mark.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((armed - 1, before, written));
        }
    }
}

pub struct Counted<S> {
    inner: S,
    counts: Arc<ByteCounts>,
    /// Follows the sandbox's TLS records until its handshake flight ends.
    tls: Option<HandshakeEnd>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counts: Arc<ByteCounts>) -> Counted<S> {
        Counted {
            inner,
            counts,
            tls: None,
        }
    }

    /// A TLS server stream: also finds where the client's handshake flight
    /// ends on the wire (rustls may read the first request with it).
    pub fn tls(inner: S, counts: Arc<ByteCounts>) -> Counted<S> {
        Counted {
            inner,
            counts,
            tls: Some(HandshakeEnd::default()),
        }
    }
}

/// Follows TLS record headers from a client until the end of its
/// handshake: the first record after the ClientHello that is encrypted
/// (type 23: TLS 1.3's Finished) or a handshake record after
/// ChangeCipherSpec (TLS 1.2's Finished). Only headers are read; the
/// bytes are not kept.
#[derive(Debug, Default)]
pub struct HandshakeEnd {
    hdr: [u8; 5],
    hdr_len: usize,
    /// Body bytes left in the current record.
    remaining: usize,
    records: u32,
    ccs: bool,
    pos: u64,
    /// Position just past the Finished record, once found (or 0 with
    /// `gave_up` when the stream is not TLS as expected).
    pub end: Option<u64>,
}

impl HandshakeEnd {
    /// Feeds the next bytes read; returns the end once found.
    pub fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        while self.end.is_none() && !data.is_empty() {
            if self.remaining == 0 && self.hdr_len < 5 {
                let take = (5 - self.hdr_len).min(data.len());
                self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&data[..take]);
                self.hdr_len += take;
                self.pos += take as u64;
                data = &data[take..];
                if self.hdr_len < 5 {
                    break;
                }
                if !(20..=23).contains(&self.hdr[0]) {
                    // Not TLS as expected: stop following (the fallback
                    // applies).
                    self.end = Some(0);
                    break;
                }
                self.remaining = usize::from(u16::from_be_bytes([self.hdr[3], self.hdr[4]]));
                if self.remaining == 0 {
                    self.record_done();
                }
                continue;
            }
            let take = self.remaining.min(data.len());
            self.remaining -= take;
            self.pos += take as u64;
            data = &data[take..];
            if self.remaining == 0 {
                self.record_done();
            }
        }
        self.end
    }

    fn record_done(&mut self) {
        let ty = self.hdr[0];
        self.hdr_len = 0;
        self.records += 1;
        if self.records == 1 {
            return; // ClientHello
        }
        match ty {
            20 => self.ccs = true,
            23 => self.end = Some(self.pos),
            22 if self.ccs => self.end = Some(self.pos),
            _ => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n == 0 && room && matches!(r, Poll::Ready(Ok(()))) {
            // EOF: the sandbox is done sending; the exchange ended before
            // whatever the agent writes now (its TLS close).
            let at = self.counts.read.load(Ordering::Relaxed);
            self.counts.on_read(at);
        }
        if n > 0 {
            let this = &mut *self;
            if let Some(t) = &mut this.tls {
                if let Some(end) = t.feed(&buf.filled()[before..]) {
                    this.counts.tls_end.store(end, Ordering::Release);
                    this.tls = None;
                }
            }
            let at = self.counts.read.fetch_add(n as u64, Ordering::Relaxed);
            self.counts.on_read(at);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counts.written.fetch_add(*n as u64, Ordering::Release);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.counts.written.fetch_add(*n as u64, Ordering::Release);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn record(ty: u8, len: usize) -> Vec<u8> {
        let mut v = vec![ty, 3, 3, (len >> 8) as u8, len as u8];
        v.extend(std::iter::repeat_n(0xab, len));
        v
    }

    #[test]
    fn handshake_end_is_the_end_of_the_clients_finished() {
        // TLS 1.3 with the compatibility CCS, Finished, then app data, fed
        // in awkward pieces (headers split across reads).
        let mut wire = record(22, 300);
        wire.extend(record(20, 1));
        wire.extend(record(23, 53));
        let end = wire.len() as u64;
        wire.extend(record(23, 400));
        for step in [1, 3, 7, 64, wire.len()] {
            let mut h = HandshakeEnd::default();
            let mut got = None;
            for chunk in wire.chunks(step) {
                if let Some(e) = h.feed(chunk) {
                    got = Some(e);
                    break;
                }
            }
            assert_eq!(got, Some(end), "chunks of {step}");
        }
        // TLS 1.3 without CCS.
        let mut wire = record(22, 200);
        wire.extend(record(23, 53));
        assert_eq!(HandshakeEnd::default().feed(&wire), Some(wire.len() as u64));
        // TLS 1.2: ClientKeyExchange, CCS, Finished.
        let mut wire = record(22, 200);
        wire.extend(record(22, 37));
        wire.extend(record(20, 1));
        wire.extend(record(22, 40));
        assert_eq!(HandshakeEnd::default().feed(&wire), Some(wire.len() as u64));
        // Not TLS: given up (0), the caller falls back.
        let mut wire = record(22, 10);
        wire.extend(b"GET / HTTP/1.1\r\n");
        assert_eq!(HandshakeEnd::default().feed(&wire), Some(0));
    }

    /// A request/response/request exchange on an in-memory pipe: the mark
    /// sits exactly between the first response and the second request.
    #[tokio::test]
    async fn marks_the_boundary_between_exchanges() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let counts = Arc::new(ByteCounts::default());
        let mut s = Counted::new(server, counts.clone());
        let mut c = client;
        let mut buf = [0u8; 64];
        c.write_all(b"request-one").await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(n, 11);
        s.write_all(b"response-one!").await.unwrap();
        counts.arm(0);
        assert_eq!(counts.mark(0), None, "no read yet");
        c.read_exact(&mut buf[..13]).await.unwrap();
        c.write_all(b"req-2").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 5);
        assert_eq!(counts.mark(0), Some((11, 13)));
        assert_eq!(counts.mark(1), None, "another exchange's mark");
        // Disarmed: later reads do not move it.
        c.write_all(b"more").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
        assert_eq!(counts.mark(0), Some((11, 13)));
        assert_eq!(counts.snapshot(), (20, 13));
    }
}
