//! Streaming `Content-Encoding` decoding for the parsers (never for what
//! the client receives: the proxy forwards the encoded bytes untouched).
//!
//! The decoder writes decoded bytes into a [`Write`] sink as compressed
//! chunks arrive, through a fixed internal buffer (flate2: 32 KiB; brotli:
//! [`BROTLI_BUFFER`] plus the stream's window, at most 16 MiB; zstd: the
//! frame's window, at most [`ZSTD_WINDOW_LOG_MAX`]), so memory stays
//! bounded whatever the compression ratio. The sink bounds the total:
//! it returns an error once its own cap is passed, which stops decoding
//! (compression bombs cost at most the cap in CPU, never in memory).

use std::io::{self, Write};

use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

/// Output buffer of the brotli decoder.
pub const BROTLI_BUFFER: usize = 8 * 1024;

/// Largest zstd window accepted (log2): 8 MiB, the limit RFC 9659 sets for
/// the `zstd` content coding. A frame asking for more fails to decode.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The encodings we decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// HTTP `deflate`: zlib-wrapped per RFC 9110, raw deflate in practice
    /// from some servers; told apart by the zlib header.
    Deflate,
    Brotli,
    Zstd,
}

impl Encoding {
    /// From a `Content-Encoding` value. `None` for anything we cannot
    /// decode (stacked encodings, unknown tokens).
    pub fn from_header(value: Option<&str>) -> Option<Encoding> {
        let v = match value {
            None => return Some(Encoding::Identity),
            Some(v) => v.trim(),
        };
        if v.is_empty() || v.eq_ignore_ascii_case("identity") {
            Some(Encoding::Identity)
        } else if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") {
            Some(Encoding::Gzip)
        } else if v.eq_ignore_ascii_case("deflate") {
            Some(Encoding::Deflate)
        } else if v.eq_ignore_ascii_case("br") {
            Some(Encoding::Brotli)
        } else if v.eq_ignore_ascii_case("zstd") {
            Some(Encoding::Zstd)
        } else {
            None
        }
    }
}

/// A decoder writing into `W`.
pub enum Decoder<W: Write> {
    Identity(W),
    Gzip(Box<GzDecoder<W>>),
    Zlib(Box<ZlibDecoder<W>>),
    RawDeflate(Box<DeflateDecoder<W>>),
    /// `deflate` before its first two bytes told zlib from raw.
    DeflateUndecided {
        sink: Option<W>,
        head: Vec<u8>,
    },
    Brotli(Box<brotli_decompressor::DecompressorWriter<W>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, W>>),
    /// The decoder could not be set up (zstd context allocation): every
    /// write fails.
    Unavailable(W),
}

impl<W: Write> std::fmt::Debug for Decoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Decoder::Identity(_) => "identity",
            Decoder::Gzip(_) => "gzip",
            Decoder::Zlib(_) => "zlib",
            Decoder::RawDeflate(_) => "raw-deflate",
            Decoder::DeflateUndecided { .. } => "deflate?",
            Decoder::Brotli(_) => "br",
            Decoder::Zstd(_) => "zstd",
            Decoder::Unavailable(_) => "unavailable",
        };
        f.write_str(name)
    }
}

/// A zlib stream starts with CMF/FLG: CM = 8, CINFO <= 7 and
/// `(CMF * 256 + FLG) % 31 == 0` (RFC 1950).
fn is_zlib_header(a: u8, b: u8) -> bool {
    a & 0x0F == 8 && a >> 4 <= 7 && (u16::from(a) * 256 + u16::from(b)) % 31 == 0
}

impl<W: Write> Decoder<W> {
    pub fn new(encoding: Encoding, sink: W) -> Self {
        match encoding {
            Encoding::Identity => Decoder::Identity(sink),
            Encoding::Gzip => Decoder::Gzip(Box::new(GzDecoder::new(sink))),
            Encoding::Deflate => Decoder::DeflateUndecided {
                sink: Some(sink),
                head: Vec::with_capacity(2),
            },
            Encoding::Brotli => Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(sink, BROTLI_BUFFER),
            )),
            Encoding::Zstd => {
                let raw = zstd::stream::raw::Decoder::new().and_then(|mut d| {
                    d.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
                        ZSTD_WINDOW_LOG_MAX,
                    ))?;
                    Ok(d)
                });
                match raw {
                    Ok(d) => Decoder::Zstd(Box::new(zstd::stream::write::Decoder::with_decoder(
                        sink, d,
                    ))),
                    Err(_) => Decoder::Unavailable(sink),
                }
            }
        }
    }

    /// The sink, when the decoder still holds it.
    pub fn sink_mut(&mut self) -> Option<&mut W> {
        match self {
            Decoder::Identity(w) => Some(w),
            Decoder::Gzip(d) => Some(d.get_mut()),
            Decoder::Zlib(d) => Some(d.get_mut()),
            Decoder::RawDeflate(d) => Some(d.get_mut()),
            Decoder::DeflateUndecided { sink, .. } => sink.as_mut(),
            Decoder::Brotli(d) => Some(d.get_mut()),
            Decoder::Zstd(d) => Some(d.get_mut()),
            Decoder::Unavailable(w) => Some(w),
        }
    }

    /// The sink, when the decoder still holds it.
    pub fn sink(&self) -> Option<&W> {
        match self {
            Decoder::Identity(w) => Some(w),
            Decoder::Gzip(d) => Some(d.get_ref()),
            Decoder::Zlib(d) => Some(d.get_ref()),
            Decoder::RawDeflate(d) => Some(d.get_ref()),
            Decoder::DeflateUndecided { sink, .. } => sink.as_ref(),
            Decoder::Brotli(d) => Some(d.get_ref()),
            Decoder::Zstd(d) => Some(d.get_ref()),
            Decoder::Unavailable(w) => Some(w),
        }
    }

    /// Decodes one chunk of the encoded body into the sink. Bytes after the
    /// end of the compressed stream are ignored.
    pub fn write_chunk(&mut self, mut chunk: &[u8]) -> io::Result<()> {
        if let Decoder::DeflateUndecided { sink, head } = self {
            while head.len() < 2 && !chunk.is_empty() {
                head.push(chunk[0]);
                chunk = &chunk[1..];
            }
            if head.len() < 2 {
                return Ok(());
            }
            let Some(w) = sink.take() else {
                return Err(io::Error::other("deflate decoder lost its sink"));
            };
            let first = [head[0], head[1]];
            *self = if is_zlib_header(first[0], first[1]) {
                Decoder::Zlib(Box::new(ZlibDecoder::new(w)))
            } else {
                Decoder::RawDeflate(Box::new(DeflateDecoder::new(w)))
            };
            self.write_all_lenient(&first)?;
        }
        self.write_all_lenient(chunk)
    }

    fn write_all_lenient(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = match self {
                Decoder::Identity(w) => w.write(buf)?,
                Decoder::Gzip(d) => d.write(buf)?,
                Decoder::Zlib(d) => d.write(buf)?,
                Decoder::RawDeflate(d) => d.write(buf)?,
                Decoder::Brotli(d) => d.write(buf)?,
                Decoder::Zstd(d) => d.write(buf)?,
                Decoder::Unavailable(_) => return Err(io::Error::other("decoder unavailable")),
                Decoder::DeflateUndecided { .. } => return Ok(()),
            };
            if n == 0 {
                // The compressed stream ended: ignore trailing bytes.
                return Ok(());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Flushes the decoder at the end of the body. An error here means the
    /// compressed stream was cut short or corrupt.
    pub fn finish(&mut self) -> io::Result<()> {
        match self {
            Decoder::Identity(_) => Ok(()),
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Zlib(d) => d.try_finish(),
            Decoder::RawDeflate(d) => d.try_finish(),
            Decoder::Brotli(d) => d.close(),
            Decoder::Zstd(d) => d.do_finish(),
            Decoder::Unavailable(_) => Err(io::Error::other("decoder unavailable")),
            Decoder::DeflateUndecided { head, .. } => {
                if head.is_empty() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "deflate stream cut short",
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }
    pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }
    pub(crate) fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }
    pub(crate) fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        out
    }

    pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn decode_in_chunks(enc: Encoding, body: &[u8], chunk: usize) -> (Vec<u8>, io::Result<()>) {
        let mut d = Decoder::new(enc, Vec::new());
        for c in body.chunks(chunk.max(1)) {
            d.write_chunk(c).unwrap();
        }
        let r = d.finish();
        (d.sink_mut().map(std::mem::take).unwrap_or_default(), r)
    }

    #[test]
    fn all_encodings_round_trip_at_any_chunking() {
        let plain: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("data: {i}\n\n").into_bytes())
            .collect();
        for (enc, body) in [
            (Encoding::Identity, plain.clone()),
            (Encoding::Gzip, gzip(&plain)),
            (Encoding::Deflate, zlib(&plain)),
            (Encoding::Deflate, raw_deflate(&plain)),
            (Encoding::Brotli, brotli(&plain)),
            (Encoding::Zstd, zstd(&plain)),
        ] {
            for chunk in [1, 2, 3, 1000, usize::MAX] {
                let (out, r) = decode_in_chunks(enc, &body, chunk.min(body.len()));
                assert!(r.is_ok(), "{enc:?} chunk {chunk}: {r:?}");
                assert_eq!(out, plain, "{enc:?} chunk {chunk}");
            }
        }
    }

    #[test]
    fn truncated_streams_fail_at_finish() {
        let plain = b"{\"id\":\"x\",\"usage\":{\"input_tokens\":1}}".repeat(50);
        for (enc, body) in [
            (Encoding::Gzip, gzip(&plain)),
            (Encoding::Deflate, zlib(&plain)),
            (Encoding::Brotli, brotli(&plain)),
            (Encoding::Zstd, zstd(&plain)),
        ] {
            let cut = &body[..body.len() / 2];
            let (_, r) = decode_in_chunks(enc, cut, 7);
            assert!(r.is_err(), "{enc:?}");
        }
    }

    #[test]
    fn zstd_frames_asking_for_a_window_past_the_limit_fail() {
        let plain = vec![b'a'; 1 << 20];
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        e.set_parameter(zstd::stream::raw::CParameter::WindowLog(
            ZSTD_WINDOW_LOG_MAX + 1,
        ))
        .unwrap();
        e.write_all(&plain).unwrap();
        let big_window = e.finish().unwrap();
        let mut d = Decoder::new(Encoding::Zstd, Vec::new());
        let r = d.write_chunk(&big_window).and_then(|()| d.finish());
        assert!(r.is_err(), "a 16 MiB window was accepted");
        // The same data with an ordinary window decodes.
        let (out, r) = decode_in_chunks(Encoding::Zstd, &zstd(&plain), 4096);
        assert!(r.is_ok() && out == plain);
    }

    #[test]
    fn header_values() {
        assert_eq!(Encoding::from_header(None), Some(Encoding::Identity));
        assert_eq!(Encoding::from_header(Some(" GZIP ")), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header(Some("br")), Some(Encoding::Brotli));
        assert_eq!(
            Encoding::from_header(Some("deflate")),
            Some(Encoding::Deflate)
        );
        assert_eq!(Encoding::from_header(Some("zstd")), Some(Encoding::Zstd));
        assert_eq!(Encoding::from_header(Some("compress")), None);
        assert_eq!(Encoding::from_header(Some("gzip, br")), None);
    }
}
