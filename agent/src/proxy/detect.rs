//! First-bytes protocol detection, shared by the redirect listener and the
//! trusted-dialer listener.
//!
//! Once a connection's origin is known its first bytes decide how it is
//! served ([`Protocol`]): a TLS handshake record is terminated, an HTTP
//! request line served as HTTP, anything else spliced or refused per the
//! gateway's `nonHttp`. [`detect`] reads at most [`DETECT_BYTES`] bytes,
//! waiting while they could still be the start of a request line (a client
//! that sends "G", then "ET / HTTP/1.1…" is served as HTTP, never spliced
//! past the policy), and hands the stream back as a [`Prefixed`] that
//! replays what it read before the rest of the stream.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How long a connection may stay silent before its protocol is known;
/// server-speaks-first protocols are then spliced.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes looked at.
pub const DETECT_BYTES: usize = 8;

/// How a connection is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS handshake record (the ClientHello): terminated.
    Tls,
    /// An HTTP/1 request line or the HTTP/2 preface.
    Http,
    /// Anything else: spliced or refused per `nonHttp`.
    Other,
}

/// What the first bytes showed.
#[derive(Debug)]
pub enum Detection {
    /// The bytes decided; an HTTP-looking prefix still incomplete at the
    /// deadline (or at the peer's end of stream) is [`Protocol::Http`].
    Known(Protocol),
    /// Not a byte within the timeout (a server-speaks-first protocol).
    Silent,
    /// The peer closed before sending a byte.
    Closed,
    /// Reading failed before the bytes decided.
    Failed(io::Error),
}

/// Reads the first bytes of `io` (at most [`DETECT_BYTES`], within
/// `timeout`) and decides what they are. The stream comes back with those
/// bytes put in front, whatever the outcome.
pub async fn detect<I>(mut io: I, timeout: Duration) -> (Detection, Prefixed<I>)
where
    I: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; DETECT_BYTES];
    let mut n = 0;
    let detection = loop {
        // `classify` decides at DETECT_BYTES at the latest, so there is
        // always room for the next read.
        match tokio::time::timeout_at(deadline, io.read(&mut buf[n..])).await {
            Ok(Ok(0)) if n == 0 => break Detection::Closed,
            Err(_) if n == 0 => break Detection::Silent,
            // An HTTP-looking prefix that got no further.
            Ok(Ok(0)) | Err(_) => break Detection::Known(Protocol::Http),
            Ok(Err(e)) => break Detection::Failed(e),
            Ok(Ok(k)) => {
                n += k;
                if let Some(p) = classify(&buf[..n]) {
                    break Detection::Known(p);
                }
            }
        }
    };
    (
        detection,
        Prefixed::new(Bytes::copy_from_slice(&buf[..n]), io),
    )
}

/// Decides on the first bytes; None while they may still be an HTTP method.
pub fn classify(b: &[u8]) -> Option<Protocol> {
    if b.first() == Some(&0x16) {
        return Some(Protocol::Tls);
    }
    // An HTTP/1 request line starts with an upper-case method token (h2
    // prior knowledge: "PRI * HTTP/2.0").
    let method_len = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    if method_len == b.len() {
        return (method_len >= DETECT_BYTES).then_some(Protocol::Http);
    }
    if method_len >= 3 && b[method_len] == b' ' {
        return Some(Protocol::Http);
    }
    Some(Protocol::Other)
}

/// Fuzzing hook (the `sniff_clienthello` target): the classification of a
/// connection's first bytes (only the first [`DETECT_BYTES`] count, as
/// [`detect`] reads no more): `"tls"`, `"http"` or `"other"`.
#[cfg(any(test, fuzzing))]
pub fn sniff_bytes(b: &[u8]) -> &'static str {
    if b.is_empty() {
        return "other";
    }
    match classify(&b[..b.len().min(DETECT_BYTES)]) {
        Some(Protocol::Tls) => "tls",
        // Undecided (a short upper-case prefix): `detect` waits for more and
        // serves it as HTTP when nothing decides it before the deadline.
        Some(Protocol::Http) | None => "http",
        Some(Protocol::Other) => "other",
    }
}

/// A stream whose first reads are served from bytes already read from it
/// (by [`detect`]); writes go straight through.
#[derive(Debug)]
pub struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: impl Into<Bytes>, io: I) -> Prefixed<I> {
        Prefixed {
            prefix: prefix.into(),
            io,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn first_bytes_decide_only_when_they_can() {
        assert_eq!(classify(&[0x16, 3, 1]), Some(Protocol::Tls));
        assert_eq!(classify(b"GET / HT"), Some(Protocol::Http));
        assert_eq!(classify(b"PRI * HT"), Some(Protocol::Http));
        assert_eq!(classify(b"PROPFIND"), Some(Protocol::Http));
        assert_eq!(classify(b"SSH-2.0-"), Some(Protocol::Other));
        assert_eq!(classify(b"\0GET / "), Some(Protocol::Other));
        assert_eq!(classify(b"get / ht"), Some(Protocol::Other));
        // Split request lines are not decided yet (not spliced past policy).
        assert_eq!(classify(b"G"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET"), None);
        assert_eq!(classify(b"GET "), Some(Protocol::Http));
    }

    #[test]
    fn the_fuzz_hook_reads_like_detect() {
        assert_eq!(sniff_bytes(b""), "other");
        assert_eq!(sniff_bytes(&[0x16, 3, 1, 2, 0]), "tls");
        assert_eq!(sniff_bytes(b"GET"), "http");
        assert_eq!(sniff_bytes(b"POST /v1 HTTP/1.1"), "http");
        assert_eq!(sniff_bytes(b"SSH-2.0-OpenSSH"), "other");
    }

    #[tokio::test]
    async fn prefixed_replays_the_prefix() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Prefixed::new(b"hello".to_vec(), b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }

    /// `detect` over a stream fed `chunks` (a pause after each), then left
    /// open or closed: the outcome and every byte read back in order.
    async fn run(chunks: &[&[u8]], close: bool, timeout: Duration) -> (Detection, Vec<u8>) {
        let (mut a, b) = tokio::io::duplex(64);
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for c in chunks {
                a.write_all(&c).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if close {
                drop(a);
                None
            } else {
                Some(a)
            }
        });
        let (d, mut io) = detect(b, timeout).await;
        let a = writer.await.unwrap();
        drop(a);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (d, all)
    }

    #[tokio::test]
    async fn detect_outcomes_and_the_replayed_bytes() {
        let long = Duration::from_secs(5);
        let (d, all) = run(&[b"G", b"ET / HTTP/1.1\r\n\r\n"], true, long).await;
        assert!(matches!(d, Detection::Known(Protocol::Http)), "{d:?}");
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
        let (d, all) = run(&[&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5, 6]], true, long).await;
        assert!(matches!(d, Detection::Known(Protocol::Tls)), "{d:?}");
        assert_eq!(all, [0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5, 6]);
        let (d, all) = run(&[b"SSH-2.0-OpenSSH_9.6\r\n"], true, long).await;
        assert!(matches!(d, Detection::Known(Protocol::Other)), "{d:?}");
        assert_eq!(all, b"SSH-2.0-OpenSSH_9.6\r\n");
        // A method token and then the end of the stream: served as HTTP.
        let (d, all) = run(&[b"GET"], true, long).await;
        assert!(matches!(d, Detection::Known(Protocol::Http)), "{d:?}");
        assert_eq!(all, b"GET");
        // ... or nothing more until the deadline.
        let (d, _) = run(&[b"POS"], false, Duration::from_millis(100)).await;
        assert!(matches!(d, Detection::Known(Protocol::Http)), "{d:?}");
        let (d, all) = run(&[], true, long).await;
        assert!(matches!(d, Detection::Closed), "{d:?}");
        assert!(all.is_empty());
        let (d, _) = run(&[], false, Duration::from_millis(50)).await;
        assert!(matches!(d, Detection::Silent), "{d:?}");
    }
}
