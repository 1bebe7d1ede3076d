//! PROXY protocol v2: the wire format of the headers trusted dialers send.
//!
//! The kernel tag is how a sandbox socket gets its attribution; a process
//! that is *not* a sandbox (a node-local worker, a sidecar, an egress relay)
//! may instead dial the agent itself and say who the connection belongs to
//! in a PROXY protocol v2 header with egret's attribution TLVs. Who may do
//! that is the trusted-dialer listener's business (`crate::proxy::trusted`);
//! this module only parses and encodes the header.
//!
//! Wire format (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>):
//! a 16-byte fixed part (12-byte signature, version/command, family/transport,
//! big-endian length of what follows), the address block (TCP/UDP over IPv4
//! 12 bytes, over IPv6 36 bytes, UNIX 216 bytes, UNSPEC none), then TLVs
//! (type, big-endian u16 length, value). Only v2 is accepted: v1 (text) has no
//! TLVs, so it cannot carry attribution, and is refused with
//! [`ProxyError::Version1`].
//!
//! egret's attribution TLVs use the custom range 0xE0–0xEF (see [`tlv`]);
//! values are UTF-8 without control characters, each at most
//! [`MAX_ATTRIBUTION_VALUE`] bytes (tracestate: [`MAX_TRACESTATE`]). The
//! standard TLVs ALPN, AUTHORITY (the host: SNI / Host of the original
//! request), CRC32C (verified when present), NOOP and UNIQUE_ID are
//! understood; others (SSL, NETNS, unknown or other custom types) are kept
//! opaque and otherwise ignored, as the spec requires.
//!
//! The header is read incrementally from the stream ([`read_header`]):
//! exactly the header's bytes, never one more, so the TLS ClientHello or
//! HTTP request behind it stays unread for the proxy.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::attribution::Attribution;

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, length.
pub const FIXED_LEN: usize = 16;
/// Most bytes accepted after the fixed part (addresses + TLVs). The spec
/// allows 65535; egret's own TLVs need a few hundred, and a bound this
/// size keeps a misbehaving dialer from making the agent buffer much.
pub const MAX_PAYLOAD_LEN: usize = 4096;
/// Longest value of an attribution TLV other than tracestate, in bytes.
pub const MAX_ATTRIBUTION_VALUE: usize = 256;
/// Longest tracestate value (the W3C limit), in bytes.
pub const MAX_TRACESTATE: usize = 512;
/// Longest AUTHORITY (a host name) and ALPN values, in bytes.
pub const MAX_AUTHORITY: usize = 255;
pub const MAX_ALPN: usize = 255;
/// Longest UNIQUE_ID value (the spec's limit), in bytes.
pub const MAX_UNIQUE_ID: usize = 128;
/// Size of one address in a UNIX address block.
pub const UNIX_ADDR_LEN: usize = 108;

/// TLV type numbers.
pub mod tlv {
    /// Application-Layer Protocol Negotiation (opaque bytes, e.g. `h2`).
    pub const ALPN: u8 = 0x01;
    /// The authority: host name the client asked for (SNI / Host).
    pub const AUTHORITY: u8 = 0x02;
    /// CRC32C (Castagnoli) of the whole header with this value zeroed, big endian.
    pub const CRC32C: u8 = 0x03;
    /// Padding; ignored.
    pub const NOOP: u8 = 0x04;
    /// Opaque connection id, at most 128 bytes.
    pub const UNIQUE_ID: u8 = 0x05;
    /// TLS details (kept opaque).
    pub const SSL: u8 = 0x20;
    /// Network namespace name (kept opaque).
    pub const NETNS: u8 = 0x30;
    // egret attribution, custom range 0xE0–0xEF; 0xE8–0xEF are reserved.
    /// `invocation.id` — required when any other attribution TLV is present.
    pub const INVOCATION_ID: u8 = 0xE0;
    /// `agent.kind`
    pub const AGENT_KIND: u8 = 0xE1;
    /// `agent.namespace`
    pub const AGENT_NAMESPACE: u8 = 0xE2;
    /// `agent.name`
    pub const AGENT_NAME: u8 = 0xE3;
    /// `agent.uid`
    pub const AGENT_UID: u8 = 0xE4;
    /// `agent.revision`
    pub const AGENT_REVISION: u8 = 0xE5;
    /// W3C `traceparent` of the invocation (parent of the transaction spans).
    pub const TRACEPARENT: u8 = 0xE6;
    /// W3C `tracestate` of the invocation.
    pub const TRACESTATE: u8 = 0xE7;

    /// A readable name for error messages.
    pub fn name(kind: u8) -> &'static str {
        match kind {
            ALPN => "ALPN",
            AUTHORITY => "AUTHORITY",
            CRC32C => "CRC32C",
            NOOP => "NOOP",
            UNIQUE_ID => "UNIQUE_ID",
            SSL => "SSL",
            NETNS => "NETNS",
            INVOCATION_ID => "invocation id",
            AGENT_KIND => "agent kind",
            AGENT_NAMESPACE => "agent namespace",
            AGENT_NAME => "agent name",
            AGENT_UID => "agent uid",
            AGENT_REVISION => "agent revision",
            TRACEPARENT => "traceparent",
            TRACESTATE => "tracestate",
            _ => "unknown",
        }
    }

    /// Types that may appear at most once and are decoded into fields.
    pub(super) fn is_decoded(kind: u8) -> bool {
        matches!(kind, ALPN | AUTHORITY | CRC32C | NOOP | UNIQUE_ID)
            || (0xE0..=0xE7).contains(&kind)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol v2 header (bad signature)")]
    BadSignature,
    #[error("PROXY protocol v1 (text) header: only v2 (binary) is accepted, attribution travels in v2 TLVs")]
    Version1,
    #[error("unsupported PROXY protocol version {0} (only 2 is accepted)")]
    BadVersion(u8),
    #[error("unknown PROXY protocol command {0:#x}")]
    BadCommand(u8),
    #[error("unknown PROXY protocol address family/transport {0:#04x}")]
    BadFamily(u8),
    #[error("truncated PROXY header: {needed} bytes needed, {have} available")]
    Truncated { needed: usize, have: usize },
    #[error(
        "PROXY header announces {0} bytes after the fixed part; the limit is {MAX_PAYLOAD_LEN}"
    )]
    TooLong(usize),
    #[error("PROXY header address block: {family} needs {needed} bytes, the header has {have}")]
    AddressTooShort {
        family: &'static str,
        needed: usize,
        have: usize,
    },
    #[error("TLV {kind:#04x} at offset {offset} runs past the end of the PROXY header")]
    TlvOverrun { kind: u8, offset: usize },
    #[error("TLV {kind:#04x} ({}): {len} bytes exceed the limit of {max}", tlv::name(*kind))]
    TlvTooLong { kind: u8, len: usize, max: usize },
    #[error("TLV {kind:#04x} ({}) appears more than once", tlv::name(*kind))]
    DuplicateTlv { kind: u8 },
    #[error("TLV {kind:#04x} ({}) is not valid UTF-8", tlv::name(*kind))]
    InvalidUtf8 { kind: u8 },
    #[error("TLV {kind:#04x} ({}) contains control characters", tlv::name(*kind))]
    ControlCharacter { kind: u8 },
    #[error("TLV {kind:#04x} ({}) must not be empty", tlv::name(*kind))]
    EmptyValue { kind: u8 },
    #[error("CRC32C TLV must hold 4 bytes, not {0}")]
    BadCrcLength(usize),
    #[error("PROXY header CRC32C mismatch: header says {expected:#010x}, computed {actual:#010x}")]
    BadCrc { expected: u32, actual: u32 },
    #[error("attribution TLVs without an invocation id (TLV 0xe0)")]
    MissingInvocationId,
    #[error("unix socket address of {0} bytes (the limit is 108, without NUL bytes)")]
    BadUnixAddress(usize),
    #[error("address family and transport do not match (an UNSPEC family needs an UNSPEC transport and the reverse)")]
    FamilyTransportMismatch,
    #[error("TLV {kind:#04x} ({}) is decoded into its own field; it cannot be an opaque TLV", tlv::name(*kind))]
    DecodedTlvAsOpaque { kind: u8 },
    #[error("timed out after {0:?} waiting for the PROXY header")]
    Timeout(Duration),
    #[error("connection closed after {0} bytes, before the PROXY header was complete")]
    Closed(usize),
    #[error("reading the PROXY header: {0}")]
    Io(#[source] io::Error),
}

/// What the dialer says the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Made by the dialer itself (health checks): no original connection.
    Local,
    /// Relayed on behalf of the client in the address block.
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unspec,
    Stream,
    Dgram,
}

/// The address block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses {
    Unspec,
    Ipv4 {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    Ipv6 {
        src: SocketAddrV6,
        dst: SocketAddrV6,
    },
    /// Socket paths (bytes up to the first NUL; abstract sockets start with none).
    Unix {
        src: Vec<u8>,
        dst: Vec<u8>,
    },
}

impl Addresses {
    /// The original destination as an IP socket address (IPv4-mapped IPv6
    /// addresses as IPv4); None for UNSPEC and UNIX.
    pub fn dst(&self) -> Option<SocketAddr> {
        match self {
            Addresses::Ipv4 { dst, .. } => Some(SocketAddr::V4(*dst)),
            Addresses::Ipv6 { dst, .. } => Some(match dst.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), dst.port()),
                None => SocketAddr::V6(*dst),
            }),
            _ => None,
        }
    }

    /// The original client as an IP socket address, if any.
    pub fn src(&self) -> Option<SocketAddr> {
        match self {
            Addresses::Ipv4 { src, .. } => Some(SocketAddr::V4(*src)),
            Addresses::Ipv6 { src, .. } => Some(SocketAddr::V6(*src)),
            _ => None,
        }
    }

    fn family_nibble(&self) -> u8 {
        match self {
            Addresses::Unspec => 0,
            Addresses::Ipv4 { .. } => 1,
            Addresses::Ipv6 { .. } => 2,
            Addresses::Unix { .. } => 3,
        }
    }
}

/// A parsed (or to be encoded) PROXY v2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub command: Command,
    pub transport: Transport,
    pub addresses: Addresses,
    /// ALPN TLV (opaque).
    pub alpn: Option<Vec<u8>>,
    /// AUTHORITY TLV: the host name of the original request.
    pub authority: Option<String>,
    /// UNIQUE_ID TLV (opaque).
    pub unique_id: Option<Vec<u8>>,
    /// Parsed: a CRC32C TLV was present and matched. Encoded: write one.
    pub checksum: bool,
    /// From egret's TLVs 0xE0–0xE7; None when the header has none.
    pub attribution: Option<Attribution>,
    /// Other TLVs, in order (type, value): SSL, NETNS, unknown types.
    pub other: Vec<(u8, Vec<u8>)>,
}

impl ProxyHeader {
    /// A PROXY/TCP header for a connection from `src` to `dst` (mixed
    /// families are written as IPv6 with IPv4-mapped addresses).
    pub fn tcp(src: SocketAddr, dst: SocketAddr) -> ProxyHeader {
        let addresses = match (src, dst) {
            (SocketAddr::V4(src), SocketAddr::V4(dst)) => Addresses::Ipv4 { src, dst },
            (s, d) => {
                let v6 = |a: SocketAddr| match a {
                    SocketAddr::V6(a) => a,
                    SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
                };
                Addresses::Ipv6 {
                    src: v6(s),
                    dst: v6(d),
                }
            }
        };
        ProxyHeader {
            command: Command::Proxy,
            transport: Transport::Stream,
            addresses,
            alpn: None,
            authority: None,
            unique_id: None,
            checksum: false,
            attribution: None,
            other: Vec::new(),
        }
    }

    /// A LOCAL header (health checks): no addresses.
    pub fn local() -> ProxyHeader {
        ProxyHeader {
            command: Command::Local,
            transport: Transport::Unspec,
            addresses: Addresses::Unspec,
            ..ProxyHeader::tcp(
                SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::from(([0, 0, 0, 0], 0)),
            )
        }
    }

    pub fn with_attribution(mut self, a: Attribution) -> ProxyHeader {
        self.attribution = Some(a);
        self
    }

    pub fn with_authority(mut self, host: impl Into<String>) -> ProxyHeader {
        self.authority = Some(host.into());
        self
    }

    pub fn with_checksum(mut self) -> ProxyHeader {
        self.checksum = true;
        self
    }

    /// The wire bytes. Values are checked against the same rules the parser
    /// applies, so whatever this returns parses back to `self`.
    pub fn encode(&self) -> Result<Vec<u8>, ProxyError> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&SIGNATURE);
        out.push(
            0x20 | match self.command {
                Command::Local => 0,
                Command::Proxy => 1,
            },
        );
        let transport = match self.transport {
            Transport::Unspec => 0,
            Transport::Stream => 1,
            Transport::Dgram => 2,
        };
        let family = self.addresses.family_nibble();
        if (family == 0) != (transport == 0) {
            return Err(ProxyError::FamilyTransportMismatch);
        }
        out.push(family << 4 | transport);
        out.extend_from_slice(&[0, 0]);
        match &self.addresses {
            Addresses::Unspec => {}
            Addresses::Ipv4 { src, dst } => {
                out.extend_from_slice(&src.ip().octets());
                out.extend_from_slice(&dst.ip().octets());
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
            }
            Addresses::Ipv6 { src, dst } => {
                out.extend_from_slice(&src.ip().octets());
                out.extend_from_slice(&dst.ip().octets());
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
            }
            Addresses::Unix { src, dst } => {
                for p in [src, dst] {
                    if p.len() > UNIX_ADDR_LEN || p.contains(&0) {
                        return Err(ProxyError::BadUnixAddress(p.len()));
                    }
                    let mut field = [0u8; UNIX_ADDR_LEN];
                    field[..p.len()].copy_from_slice(p);
                    out.extend_from_slice(&field);
                }
            }
        }
        if let Some(v) = &self.alpn {
            check_len(tlv::ALPN, v.len(), MAX_ALPN)?;
            push_tlv(&mut out, tlv::ALPN, v);
        }
        if let Some(v) = &self.authority {
            text(tlv::AUTHORITY, v.as_bytes(), MAX_AUTHORITY)?;
            if v.is_empty() {
                return Err(ProxyError::EmptyValue {
                    kind: tlv::AUTHORITY,
                });
            }
            push_tlv(&mut out, tlv::AUTHORITY, v.as_bytes());
        }
        if let Some(v) = &self.unique_id {
            check_len(tlv::UNIQUE_ID, v.len(), MAX_UNIQUE_ID)?;
            push_tlv(&mut out, tlv::UNIQUE_ID, v);
        }
        if let Some(a) = &self.attribution {
            if a.invocation_id.is_empty() {
                return Err(ProxyError::EmptyValue {
                    kind: tlv::INVOCATION_ID,
                });
            }
            let fields: [(u8, &str); 8] = [
                (tlv::INVOCATION_ID, &a.invocation_id),
                (tlv::AGENT_KIND, &a.agent_kind),
                (tlv::AGENT_NAMESPACE, &a.agent_namespace),
                (tlv::AGENT_NAME, &a.agent_name),
                (tlv::AGENT_UID, &a.agent_uid),
                (tlv::AGENT_REVISION, &a.agent_revision),
                (tlv::TRACEPARENT, a.traceparent.as_deref().unwrap_or("")),
                (tlv::TRACESTATE, a.tracestate.as_deref().unwrap_or("")),
            ];
            for (kind, v) in fields {
                text(kind, v.as_bytes(), attribution_limit(kind))?;
                if !v.is_empty() {
                    push_tlv(&mut out, kind, v.as_bytes());
                }
            }
        }
        for (kind, v) in &self.other {
            if tlv::is_decoded(*kind) {
                return Err(ProxyError::DecodedTlvAsOpaque { kind: *kind });
            }
            check_len(*kind, v.len(), usize::from(u16::MAX))?;
            push_tlv(&mut out, *kind, v);
        }
        let crc_at = self.checksum.then(|| {
            push_tlv(&mut out, tlv::CRC32C, &[0; 4]);
            out.len() - 4
        });
        let len = out.len() - FIXED_LEN;
        if len > MAX_PAYLOAD_LEN {
            return Err(ProxyError::TooLong(len));
        }
        out[14..16].copy_from_slice(&(len as u16).to_be_bytes());
        if let Some(at) = crc_at {
            let crc = crc32c(&out);
            out[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        }
        Ok(out)
    }
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    // Callers bound `value` well below u16::MAX (and the whole header below
    // MAX_PAYLOAD_LEN), so the cast cannot truncate a value that is encoded.
    out.extend_from_slice(&(value.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(value);
}

fn check_len(kind: u8, len: usize, max: usize) -> Result<(), ProxyError> {
    if len > max {
        return Err(ProxyError::TlvTooLong { kind, len, max });
    }
    Ok(())
}

fn attribution_limit(kind: u8) -> usize {
    if kind == tlv::TRACESTATE {
        MAX_TRACESTATE
    } else {
        MAX_ATTRIBUTION_VALUE
    }
}

/// A bounded UTF-8 value without control characters.
fn text(kind: u8, v: &[u8], max: usize) -> Result<String, ProxyError> {
    check_len(kind, v.len(), max)?;
    let s = std::str::from_utf8(v).map_err(|_| ProxyError::InvalidUtf8 { kind })?;
    if s.chars().any(char::is_control) {
        return Err(ProxyError::ControlCharacter { kind });
    }
    Ok(s.to_owned())
}

/// CRC32C (Castagnoli, reflected 0x82F63B78) as the spec's CRC32C TLV uses.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Rejects as early as the bytes seen so far allow: Some(error) when
/// `prefix` can no longer become a v2 header.
fn early_reject(prefix: &[u8]) -> Option<ProxyError> {
    let k = prefix.len().min(SIGNATURE.len());
    if prefix[..k] == SIGNATURE[..k] {
        return None;
    }
    const V1: &[u8] = b"PROXY ";
    let k = prefix.len().min(V1.len());
    if prefix[..k] == V1[..k] {
        // Possibly v1: say so once it is certain.
        return (k == V1.len()).then_some(ProxyError::Version1);
    }
    Some(ProxyError::BadSignature)
}

/// The fixed part, checked.
struct Fixed {
    command: Command,
    family: u8,
    len: usize,
}

fn parse_fixed(b: &[u8]) -> Result<Fixed, ProxyError> {
    if let Some(e) = early_reject(&b[..b.len().min(FIXED_LEN)]) {
        return Err(e);
    }
    if b.len() < FIXED_LEN {
        return Err(ProxyError::Truncated {
            needed: FIXED_LEN,
            have: b.len(),
        });
    }
    let version = b[12] >> 4;
    if version != 2 {
        return Err(ProxyError::BadVersion(version));
    }
    let command = match b[12] & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        c => return Err(ProxyError::BadCommand(c)),
    };
    let len = usize::from(u16::from_be_bytes([b[14], b[15]]));
    if len > MAX_PAYLOAD_LEN {
        return Err(ProxyError::TooLong(len));
    }
    Ok(Fixed {
        command,
        family: b[13],
        len,
    })
}

/// Parses one header from the start of `bytes`: the header and how many
/// bytes it took. Never panics, whatever `bytes` holds; fewer bytes than
/// the header needs give [`ProxyError::Truncated`].
pub fn parse_header(bytes: &[u8]) -> Result<(ProxyHeader, usize), ProxyError> {
    let fixed = parse_fixed(bytes)?;
    let total = FIXED_LEN + fixed.len;
    let Some(header) = bytes.get(..total) else {
        return Err(ProxyError::Truncated {
            needed: total,
            have: bytes.len(),
        });
    };
    let payload = &header[FIXED_LEN..];
    let transport = match fixed.family & 0x0f {
        0 => Transport::Unspec,
        1 => Transport::Stream,
        2 => Transport::Dgram,
        _ => Transport::Unspec,
    };
    let (family, transport) = match (fixed.family, fixed.command) {
        (0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32, _) => (fixed.family >> 4, transport),
        // LOCAL: the spec says the family is to be ignored.
        (_, Command::Local) => (0, Transport::Unspec),
        (f, Command::Proxy) => return Err(ProxyError::BadFamily(f)),
    };
    let (name, need) = match family {
        1 => ("TCP/UDP over IPv4", 12),
        2 => ("TCP/UDP over IPv6", 36),
        3 => ("UNIX", 2 * UNIX_ADDR_LEN),
        _ => ("UNSPEC", 0),
    };
    if payload.len() < need {
        return Err(ProxyError::AddressTooShort {
            family: name,
            needed: need,
            have: payload.len(),
        });
    }
    let a = &payload[..need];
    let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    let addresses = match family {
        1 => Addresses::Ipv4 {
            src: SocketAddrV4::new(Ipv4Addr::new(a[0], a[1], a[2], a[3]), port(8)),
            dst: SocketAddrV4::new(Ipv4Addr::new(a[4], a[5], a[6], a[7]), port(10)),
        },
        2 => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[at..at + 16]);
                Ipv6Addr::from(o)
            };
            Addresses::Ipv6 {
                src: SocketAddrV6::new(ip(0), port(32), 0, 0),
                dst: SocketAddrV6::new(ip(16), port(34), 0, 0),
            }
        }
        3 => {
            let path = |f: &[u8]| f.iter().take_while(|&&b| b != 0).copied().collect();
            Addresses::Unix {
                src: path(&a[..UNIX_ADDR_LEN]),
                dst: path(&a[UNIX_ADDR_LEN..]),
            }
        }
        _ => Addresses::Unspec,
    };
    let mut h = ProxyHeader {
        command: fixed.command,
        transport,
        addresses,
        alpn: None,
        authority: None,
        unique_id: None,
        checksum: false,
        attribution: None,
        other: Vec::new(),
    };
    parse_tlvs(header, FIXED_LEN + need, &mut h)?;
    Ok((h, total))
}

/// TLVs from `start` to the end of `header` (the whole header, for CRC32C).
fn parse_tlvs(header: &[u8], start: usize, h: &mut ProxyHeader) -> Result<(), ProxyError> {
    let mut attr: [Option<String>; 8] = Default::default();
    let mut crc: Option<(usize, u32)> = None;
    let mut off = start;
    while off < header.len() {
        let kind = header[off];
        let Some(&[hi, lo]) = header.get(off + 1..off + 3) else {
            return Err(ProxyError::TlvOverrun { kind, offset: off });
        };
        let vstart = off + 3;
        let vend = vstart + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(v) = header.get(vstart..vend) else {
            return Err(ProxyError::TlvOverrun { kind, offset: off });
        };
        let dup = || ProxyError::DuplicateTlv { kind };
        match kind {
            tlv::ALPN => {
                check_len(kind, v.len(), MAX_ALPN)?;
                if h.alpn.replace(v.to_vec()).is_some() {
                    return Err(dup());
                }
            }
            tlv::AUTHORITY => {
                let s = text(kind, v, MAX_AUTHORITY)?;
                if s.is_empty() {
                    return Err(ProxyError::EmptyValue { kind });
                }
                if h.authority.replace(s).is_some() {
                    return Err(dup());
                }
            }
            tlv::CRC32C => {
                let Ok(b) = <[u8; 4]>::try_from(v) else {
                    return Err(ProxyError::BadCrcLength(v.len()));
                };
                if crc.replace((vstart, u32::from_be_bytes(b))).is_some() {
                    return Err(dup());
                }
            }
            tlv::NOOP => {}
            tlv::UNIQUE_ID => {
                check_len(kind, v.len(), MAX_UNIQUE_ID)?;
                if h.unique_id.replace(v.to_vec()).is_some() {
                    return Err(dup());
                }
            }
            tlv::INVOCATION_ID..=tlv::TRACESTATE => {
                let s = text(kind, v, attribution_limit(kind))?;
                if attr[usize::from(kind - tlv::INVOCATION_ID)]
                    .replace(s)
                    .is_some()
                {
                    return Err(dup());
                }
            }
            _ => h.other.push((kind, v.to_vec())),
        }
        off = vend;
    }
    if let Some((at, expected)) = crc {
        let mut copy = header.to_vec();
        copy[at..at + 4].fill(0);
        let actual = crc32c(&copy);
        if actual != expected {
            return Err(ProxyError::BadCrc { expected, actual });
        }
        h.checksum = true;
    }
    if attr.iter().any(Option::is_some) {
        let [inv, kind, ns, name, uid, rev, tp, ts] = attr;
        let invocation_id = inv.ok_or(ProxyError::MissingInvocationId)?;
        if invocation_id.is_empty() {
            return Err(ProxyError::EmptyValue {
                kind: tlv::INVOCATION_ID,
            });
        }
        h.attribution = Some(Attribution {
            invocation_id,
            agent_kind: kind.unwrap_or_default(),
            agent_namespace: ns.unwrap_or_default(),
            agent_name: name.unwrap_or_default(),
            agent_uid: uid.unwrap_or_default(),
            agent_revision: rev.unwrap_or_default(),
            traceparent: tp.filter(|s| !s.is_empty()),
            tracestate: ts.filter(|s| !s.is_empty()),
        });
    }
    Ok(())
}

/// Fuzz entry (the `proxy_protocol` fuzz target, and this module's tests):
/// parsing never panics, and whatever parses encodes and parses back to the
/// same header.
#[cfg(any(test, fuzzing))]
pub fn fuzz_parse(data: &[u8]) {
    if let Ok((h, used)) = parse_header(data) {
        assert!((FIXED_LEN..=FIXED_LEN + MAX_PAYLOAD_LEN).contains(&used));
        let bytes = h.encode().expect("a parsed header encodes");
        let (again, n) = parse_header(&bytes).expect("an encoded header parses");
        assert_eq!(n, bytes.len());
        assert_eq!(again, h);
    }
}

/// Reads one header from `r`: exactly its bytes, never past its end, within
/// `timeout`. Rejects v1 and garbage as soon as the first bytes show it.
pub async fn read_header<R>(r: &mut R, timeout: Duration) -> Result<ProxyHeader, ProxyError>
where
    R: AsyncRead + Unpin,
{
    match tokio::time::timeout(timeout, read_header_inner(r)).await {
        Ok(res) => res,
        Err(_) => Err(ProxyError::Timeout(timeout)),
    }
}

async fn read_header_inner<R>(r: &mut R) -> Result<ProxyHeader, ProxyError>
where
    R: AsyncRead + Unpin,
{
    let mut fixed = [0u8; FIXED_LEN];
    let mut n = 0;
    while n < FIXED_LEN {
        let k = r.read(&mut fixed[n..]).await.map_err(ProxyError::Io)?;
        if k == 0 {
            return Err(ProxyError::Closed(n));
        }
        n += k;
        if let Some(e) = early_reject(&fixed[..n]) {
            return Err(e);
        }
    }
    let f = parse_fixed(&fixed)?;
    let mut buf = vec![0u8; FIXED_LEN + f.len];
    buf[..FIXED_LEN].copy_from_slice(&fixed);
    let mut got = FIXED_LEN;
    while got < buf.len() {
        let k = r.read(&mut buf[got..]).await.map_err(ProxyError::Io)?;
        if k == 0 {
            return Err(ProxyError::Closed(got));
        }
        got += k;
    }
    parse_header(&buf).map(|(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribution() -> Attribution {
        Attribution {
            invocation_id: "inv-42".into(),
            agent_kind: "TaskAgent".into(),
            agent_namespace: "team-a".into(),
            agent_name: "jq-bot".into(),
            agent_uid: "6c1f".into(),
            agent_revision: "7".into(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("vendor=opaque".into()),
        }
    }

    fn full() -> ProxyHeader {
        ProxyHeader::tcp(
            "10.0.0.7:40000".parse().unwrap(),
            "203.0.113.9:443".parse().unwrap(),
        )
        .with_authority("api.openai.com")
        .with_attribution(attribution())
        .with_checksum()
    }

    fn err(bytes: &[u8]) -> ProxyError {
        match parse_header(bytes) {
            Ok(h) => panic!("parsed {h:?}"),
            Err(e) => e,
        }
    }

    /// A header with the given family byte and payload, no CRC.
    fn raw(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.push(cmd);
        v.push(fam);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn v4_addrs() -> Vec<u8> {
        vec![10, 0, 0, 7, 203, 0, 113, 9, 0x9c, 0x40, 0x01, 0xbb]
    }

    #[test]
    fn crc32c_known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn round_trip_every_family() {
        let headers = [
            full(),
            ProxyHeader::tcp(
                "[2001:db8::1]:5".parse().unwrap(),
                "[2001:db8::2]:443".parse().unwrap(),
            ),
            ProxyHeader {
                addresses: Addresses::Unix {
                    src: b"/run/worker.sock".to_vec(),
                    dst: vec![b'x'; UNIX_ADDR_LEN],
                },
                ..ProxyHeader::tcp("1.1.1.1:1".parse().unwrap(), "2.2.2.2:2".parse().unwrap())
            },
            ProxyHeader::local(),
            ProxyHeader {
                transport: Transport::Dgram,
                alpn: Some(b"h2".to_vec()),
                unique_id: Some(vec![7; MAX_UNIQUE_ID]),
                other: vec![
                    (0x20, vec![1, 2, 3]),
                    (0xE8, vec![]),
                    (0x30, b"ns".to_vec()),
                ],
                ..full()
            },
        ];
        for h in headers {
            let bytes = h.encode().unwrap();
            let mut trailing = bytes.clone();
            trailing.extend_from_slice(b"\x16\x03\x01 ClientHello...");
            let (back, used) = parse_header(&trailing).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, h);
            fuzz_parse(&trailing);
        }
    }

    #[test]
    fn attribution_and_destination() {
        let (h, _) = parse_header(&full().encode().unwrap()).unwrap();
        assert_eq!(h.attribution, Some(attribution()));
        assert_eq!(h.addresses.dst(), Some("203.0.113.9:443".parse().unwrap()));
        assert_eq!(h.authority.as_deref(), Some("api.openai.com"));
        assert!(h.checksum);
        // Mixed families: written as IPv6, the destination comes back as v4.
        let h = ProxyHeader::tcp(
            "[2001:db8::1]:5".parse().unwrap(),
            "192.0.2.1:443".parse().unwrap(),
        );
        let (h, _) = parse_header(&h.encode().unwrap()).unwrap();
        assert_eq!(h.addresses.dst(), Some("192.0.2.1:443".parse().unwrap()));
        // Only the invocation id is required.
        let mut payload = v4_addrs();
        payload.extend_from_slice(&[0xE0, 0, 3, b'i', b'n', b'v']);
        let (h, _) = parse_header(&raw(0x21, 0x11, &payload)).unwrap();
        let a = h.attribution.unwrap();
        assert_eq!(a.invocation_id, "inv");
        assert_eq!((a.agent_name.as_str(), a.traceparent), ("", None));
    }

    #[test]
    fn bad_signature_version_command_family() {
        assert!(matches!(
            err(b"GET / HTTP/1.1\r\n\r\n"),
            ProxyError::BadSignature
        ));
        assert!(matches!(err(&[0x16, 3, 1, 0, 0]), ProxyError::BadSignature));
        assert!(matches!(
            err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            ProxyError::Version1
        ));
        assert!(matches!(
            err(&raw(0x11, 0x11, &v4_addrs())),
            ProxyError::BadVersion(1)
        ));
        assert!(matches!(
            err(&raw(0x22, 0x11, &v4_addrs())),
            ProxyError::BadCommand(2)
        ));
        assert!(matches!(
            err(&raw(0x21, 0x13, &v4_addrs())),
            ProxyError::BadFamily(0x13)
        ));
        assert!(matches!(
            err(&raw(0x21, 0x41, &v4_addrs())),
            ProxyError::BadFamily(0x41)
        ));
        // LOCAL ignores the family, as the spec says.
        let (h, _) = parse_header(&raw(0x20, 0x41, &[])).unwrap();
        assert_eq!(
            (h.command, h.addresses),
            (Command::Local, Addresses::Unspec)
        );
    }

    #[test]
    fn truncated_and_overlong() {
        let bytes = full().encode().unwrap();
        for cut in [0, 5, 12, 15, 16, 30, bytes.len() - 1] {
            assert!(
                matches!(err(&bytes[..cut]), ProxyError::Truncated { .. }),
                "cut at {cut}: {}",
                err(&bytes[..cut])
            );
        }
        let mut long = raw(0x21, 0x11, &[]);
        long[14..16].copy_from_slice(&(MAX_PAYLOAD_LEN as u16 + 1).to_be_bytes());
        assert!(matches!(err(&long), ProxyError::TooLong(4097)));
        long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(err(&long), ProxyError::TooLong(65535)));
        // Address block shorter than the family needs.
        assert!(matches!(
            err(&raw(0x21, 0x21, &v4_addrs())),
            ProxyError::AddressTooShort {
                needed: 36,
                have: 12,
                ..
            }
        ));
        // A TLV whose length runs past the header, and a cut TLV head.
        let mut p = v4_addrs();
        p.extend_from_slice(&[0xE0, 0x00, 0x09, b'x']);
        assert!(matches!(
            err(&raw(0x21, 0x11, &p)),
            ProxyError::TlvOverrun { kind: 0xE0, .. }
        ));
        let mut p = v4_addrs();
        p.extend_from_slice(&[0xE0, 0x00]);
        assert!(matches!(
            err(&raw(0x21, 0x11, &p)),
            ProxyError::TlvOverrun { .. }
        ));
    }

    #[test]
    fn crc_is_verified() {
        let mut bytes = full().encode().unwrap();
        let (h, _) = parse_header(&bytes).unwrap();
        assert!(h.checksum);
        // Flip one bit of the destination address.
        bytes[FIXED_LEN + 5] ^= 1;
        assert!(matches!(err(&bytes), ProxyError::BadCrc { .. }));
        let mut p = v4_addrs();
        p.extend_from_slice(&[0x03, 0, 2, 0, 0]);
        assert!(matches!(
            err(&raw(0x21, 0x11, &p)),
            ProxyError::BadCrcLength(2)
        ));
    }

    #[test]
    fn tlv_values_are_bounded_utf8_and_unique() {
        let tlv_header = |tlvs: &[u8]| {
            let mut p = v4_addrs();
            p.extend_from_slice(tlvs);
            raw(0x21, 0x11, &p)
        };
        let mut big = vec![0xE3, 0x01, 0x01];
        big.extend(std::iter::repeat_n(b'a', 257));
        assert!(matches!(
            err(&tlv_header(&big)),
            ProxyError::TlvTooLong {
                kind: 0xE3,
                len: 257,
                max: 256
            }
        ));
        assert!(matches!(
            err(&tlv_header(&[0xE0, 0, 2, 0xff, 0xfe])),
            ProxyError::InvalidUtf8 { kind: 0xE0 }
        ));
        assert!(matches!(
            err(&tlv_header(&[0xE0, 0, 2, b'a', b'\n'])),
            ProxyError::ControlCharacter { kind: 0xE0 }
        ));
        assert!(matches!(
            err(&tlv_header(&[0xE0, 0, 0])),
            ProxyError::EmptyValue { kind: 0xE0 }
        ));
        assert!(matches!(
            err(&tlv_header(&[0xE3, 0, 1, b'n'])),
            ProxyError::MissingInvocationId
        ));
        assert!(matches!(
            err(&tlv_header(&[0xE0, 0, 1, b'a', 0xE0, 0, 1, b'b'])),
            ProxyError::DuplicateTlv { kind: 0xE0 }
        ));
        assert!(matches!(
            err(&tlv_header(&[0x02, 0, 1, b'a', 0x02, 0, 1, b'b'])),
            ProxyError::DuplicateTlv { kind: 0x02 }
        ));
        let mut uid = vec![0x05, 0, 129];
        uid.extend([0u8; 129]);
        assert!(matches!(
            err(&tlv_header(&uid)),
            ProxyError::TlvTooLong { kind: 0x05, .. }
        ));
        // NOOP padding and unknown types are skipped.
        let (h, _) =
            parse_header(&tlv_header(&[0x04, 0, 2, 0, 0, 0x04, 0, 0, 0xEF, 0, 1, 9])).unwrap();
        assert_eq!(h.other, vec![(0xEF, vec![9])]);
    }

    #[test]
    fn encode_refuses_what_parse_would_reject() {
        let mut a = attribution();
        a.agent_name = "x".repeat(MAX_ATTRIBUTION_VALUE + 1);
        assert!(matches!(
            full().with_attribution(a).encode(),
            Err(ProxyError::TlvTooLong { .. })
        ));
        let mut a = attribution();
        a.invocation_id.clear();
        assert!(full().with_attribution(a).encode().is_err());
        let h = ProxyHeader {
            other: vec![(tlv::AUTHORITY, b"x".to_vec())],
            ..full()
        };
        assert!(matches!(
            h.encode(),
            Err(ProxyError::DecodedTlvAsOpaque { .. })
        ));
        let h = ProxyHeader {
            other: vec![(0x20, vec![0; 5000])],
            ..full()
        };
        assert!(matches!(h.encode(), Err(ProxyError::TooLong(_))));
        let h = ProxyHeader {
            transport: Transport::Unspec,
            ..full()
        };
        assert!(matches!(
            h.encode(),
            Err(ProxyError::FamilyTransportMismatch)
        ));
    }

    #[test]
    fn fuzz_entry_survives_garbage() {
        let good = full().encode().unwrap();
        // Every prefix and every single-byte corruption of a good header.
        for cut in 0..=good.len() {
            fuzz_parse(&good[..cut]);
        }
        for i in 0..good.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] ^= x;
                fuzz_parse(&b);
            }
        }
        // Pseudo-random inputs behind a valid fixed part.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let mut b = raw(0x21, 0x11, &[]);
            let n = (s % 300) as usize;
            for _ in 0..n {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                b.push(s as u8);
            }
            let len = (b.len() - FIXED_LEN) as u16;
            b[14..16].copy_from_slice(&len.to_be_bytes());
            fuzz_parse(&b);
        }
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let h = full().encode().unwrap();
        let rest = b"\x16\x03\x01\x02\x00 the ClientHello";
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut wire = h.clone();
        wire.extend_from_slice(rest);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // Dribble it in small pieces.
            for c in wire.chunks(5) {
                a.write_all(c).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            a
        });
        let got = read_header(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, full());
        let mut after = vec![0u8; rest.len()];
        b.read_exact(&mut after).await.unwrap();
        assert_eq!(after, rest);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn reader_rejects_early_and_times_out() {
        use tokio::io::AsyncWriteExt;
        // v1 is recognised from its first 6 bytes, without waiting for 16.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
        let e = read_header(&mut b, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::Version1), "{e}");
        // A TLS ClientHello where the header should be: rejected at once.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0x16, 0x03]).await.unwrap();
        let e = read_header(&mut b, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::BadSignature), "{e}");
        // Half a header, then silence.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&full().encode().unwrap()[..20]).await.unwrap();
        let e = read_header(&mut b, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::Timeout(_)), "{e}");
        // Half a header, then close.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&full().encode().unwrap()[..20]).await.unwrap();
        drop(a);
        let e = read_header(&mut b, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::Closed(20)), "{e}");
    }
}
