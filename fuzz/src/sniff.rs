//! `sniff_clienthello`: a connection's first bytes through the proxy's
//! protocol sniffing and the TLS terminator's ClientHello reading.
//!
//! Layout: the raw client bytes (seeds: real ClientHellos captured from
//! curl, openssl s_client and rustls, plus HTTP request heads).
//!
//! Invariants:
//! - the classification is one of `tls`, `http`, `other` and depends on
//!   the first 8 bytes only; no bytes is `other` (the peer closed);
//!   a short run of upper-case letters (a method token still arriving,
//!   which the proxy waits for and serves as HTTP at its deadline) is
//!   `http`;
//! - an HTTP request line (`GET /…`) is `http`;
//! - whatever rustls accepts as a ClientHello was classified `tls`;
//! - the SNI the terminator gets is non-empty, lowercase, and present in
//!   the bytes; every ALPN protocol offered is non-empty and present in
//!   the bytes.
use crate::input::find;

pub fn sniff_clienthello(data: &[u8]) {
    let class = egret::proxy::detect::sniff_bytes(data);
    assert!(matches!(class, "tls" | "http" | "other"), "{class}");
    if data.is_empty() {
        assert_eq!(class, "other");
    } else if data.len() < 8 && data.iter().all(u8::is_ascii_uppercase) {
        assert_eq!(class, "http", "a method prefix on {data:?}");
    }
    assert_eq!(
        class,
        egret::proxy::detect::sniff_bytes(&data[..data.len().min(8)]),
        "classification looked past the first 8 bytes"
    );
    for m in [
        &b"GET /"[..],
        b"POST /",
        b"PUT /",
        b"DELETE /",
        b"PRI * HTTP/2.0",
    ] {
        if data.starts_with(m) {
            assert_eq!(class, "http");
        }
    }

    let Some((sni, alpn)) = egret::tls::read_client_hello(data) else {
        return;
    };
    assert_eq!(class, "tls", "a ClientHello was not sniffed as TLS");
    if let Some(name) = &sni {
        assert!(!name.is_empty(), "empty SNI");
        assert!(
            !name.bytes().any(|b| b.is_ascii_uppercase()),
            "SNI not lowercase: {name:?}"
        );
        let lower: Vec<u8> = data.to_ascii_lowercase();
        assert!(
            find(&lower, name.as_bytes()).is_some(),
            "SNI not in the bytes"
        );
    }
    for p in &alpn {
        assert!(!p.is_empty(), "empty ALPN protocol");
        assert!(find(data, p).is_some(), "ALPN protocol not in the bytes");
    }
}
