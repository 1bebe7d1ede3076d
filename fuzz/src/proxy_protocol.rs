//! `proxy_protocol`: PROXY protocol v2 headers from trusted dialers through
//! the agent's parser (`egret::proxy_protocol::fuzz_parse`, which owns the
//! invariants: parsing never panics, a parsed header uses between 16 and
//! 16 + 4096 bytes, and re-encodes to a header that parses back equal).
//!
//! Layout: the raw bytes a dialer sends (header, then whatever follows).
//! Seeds: v2 headers over TCP4/TCP6/UNIX and LOCAL, with egret's
//! attribution TLVs, AUTHORITY, ALPN, CRC32C, NOOP, unknown TLVs, and a
//! ClientHello or an HTTP request after the header (`fuzz/seeds.py`).
pub fn proxy_protocol(data: &[u8]) {
    egret::proxy_protocol::fuzz_parse(data);
}
