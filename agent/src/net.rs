//! Generic networking: IP networks ([`Cidr`]), the agent's listening and
//! connecting sockets, and which addresses are this host's own.
//!
//! Nothing here knows about sandboxes or network namespaces: a caller that
//! needs a socket inside a sandbox's netns creates it there (`crate::netns`)
//! with [`tcp_socket`] and connects it with [`connect`].
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use tokio::net::{TcpSocket, TcpStream};

/// Why a string is not a [`Cidr`]. The messages quote the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{input:?}: not an IP address")]
    Address { input: String },
    #[error("{input:?}: prefix length must be 0-{max}")]
    Prefix { input: String, max: u8 },
    #[error("{input:?} has host bits set (did you mean {network}/{prefix}?)")]
    HostBits {
        input: String,
        network: IpAddr,
        prefix: u8,
    },
}

/// An IP network (`10.0.0.0/8`, `::1/128`; a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr = canonical(IpAddr::from_str(ip.trim()).map_err(|_| CidrError::Address {
            input: s.to_owned(),
        })?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix {
                    input: s.to_owned(),
                    max,
                })?,
            None => max,
        };
        let c = Cidr { addr, prefix };
        if c.network() != addr {
            return Err(CidrError::HostBits {
                input: s.to_owned(),
                network: c.network(),
                prefix,
            });
        }
        Ok(c)
    }
}

impl Cidr {
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        Cidr {
            addr: ip,
            prefix: self.prefix,
        }
        .network()
            == self.addr
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A non-blocking TCP listener on `addr` (address reuse on; an IPv6
/// address listens on IPv6 only), in the calling thread's netns.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A non-blocking TCP socket (Nagle off) for connecting to `dst`, in the
/// calling thread's netns.
pub fn tcp_socket(dst: SocketAddr) -> io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    Ok(s)
}

/// Connects `sock` (from [`tcp_socket`]) to `dst` within `timeout`.
pub async fn connect(
    sock: socket2::Socket,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let sock = TcpSocket::from_std_stream(sock.into());
    tokio::time::timeout(timeout, sock.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// True when `ip` is an address of an interface in the calling thread's
/// netns (also when the interfaces cannot be listed: the stricter answer
/// for the callers, which refuse local peers they cannot verify).
pub fn is_local_address(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        // Unknown: treat as local, which makes the check stricter.
        return true;
    };
    addrs.into_iter().any(|a| {
        a.address.is_some_and(|s| {
            s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                || s.as_sockaddr_in6().map(|v6| canonical(IpAddr::V6(v6.ip()))) == Some(ip)
        })
    })
}

/// Whether `host` (a DNS name, trailing dot allowed) matches `pattern`,
/// case-insensitively. A pattern is dot-separated labels:
/// - a leading `*` label matches one or more labels (`*.example.com`:
///   every subdomain, not the apex);
/// - any other label may hold `*` matching one or more characters within
///   that one label (`bedrock-runtime.*.amazonaws.com`,
///   `*-aiplatform.googleapis.com`);
/// - anything else matches itself.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let (any_prefix, pattern) = match pattern.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let want: Vec<&str> = pattern.split('.').collect();
    let have: Vec<&str> = host.split('.').collect();
    if have.len() < want.len() + usize::from(any_prefix)
        || (!any_prefix && have.len() != want.len())
    {
        return false;
    }
    let tail = &have[have.len() - want.len()..];
    let prefix_ok = have[..have.len() - want.len()]
        .iter()
        .all(|l| !l.is_empty());
    prefix_ok && want.iter().zip(tail).all(|(p, l)| label_matches(p, l))
}

/// One label against one pattern label (`*` = one or more characters).
fn label_matches(pattern: &str, label: &str) -> bool {
    fn glob(p: &[u8], l: &[u8]) -> bool {
        match p.split_first() {
            None => l.is_empty(),
            Some((b'*', rest)) => (1..=l.len()).any(|i| glob(rest, &l[i..])),
            Some((c, rest)) => l
                .split_first()
                .is_some_and(|(d, l)| c.eq_ignore_ascii_case(d) && glob(rest, l)),
        }
    }
    !label.is_empty() && glob(pattern.as_bytes(), label.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "a.b.Example.COM"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(host_matches("api.openai.com", "API.openai.com."));
        assert!(!host_matches("api.openai.com", "api.openai.com.evil"));
        assert!(!host_matches("api.openai.com", "x.api.openai.com"));
        let b = "bedrock-runtime.*.amazonaws.com";
        assert!(host_matches(b, "bedrock-runtime.us-east-1.amazonaws.com"));
        assert!(!host_matches(b, "bedrock-runtime.amazonaws.com"));
        assert!(!host_matches(b, "bedrock-runtime.a.b.amazonaws.com"));
        assert!(!host_matches(b, "s3.us-east-1.amazonaws.com"));
        let v = "*-aiplatform.googleapis.com";
        assert!(host_matches(v, "us-central1-aiplatform.googleapis.com"));
        assert!(!host_matches(v, "-aiplatform.googleapis.com"));
        assert!(!host_matches(v, "aiplatform.googleapis.com"));
        assert!(!host_matches(v, "x.us-aiplatform.googleapis.com"));
        assert!(!host_matches(
            v,
            "us-central1-aiplatform.googleapis.com.evil"
        ));
        assert!(host_matches("a*b*c.x", "aXXbYc.x"));
        assert!(!host_matches("a*b*c.x", "abc.x"));
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.1.0.1/16"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("host bits"));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn cidr_errors_read_as_before() {
        let e = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(e("nope/8"), "\"nope/8\": not an IP address");
        assert_eq!(
            e("10.0.0.0/33"),
            "\"10.0.0.0/33\": prefix length must be 0-32"
        );
        assert_eq!(
            e("10.1.0.1/16"),
            "\"10.1.0.1/16\" has host bits set (did you mean 10.1.0.0/16?)"
        );
    }
}
