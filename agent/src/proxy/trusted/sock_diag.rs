//! `sock_diag` (NETLINK_SOCK_DIAG) lookup of one TCP socket by 4-tuple:
//! the trusted listener finds a TCP peer's own socket (its cookie and
//! cgroup) to refuse sandbox sockets.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const INET_DIAG_CGROUP_ID: u16 = 21;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_msg` size.
const DIAG_MSG: usize = 72;

/// The peer socket as the kernel reports it.
#[derive(Debug)]
pub struct PeerSock {
    pub cookie: u64,
    /// None for TIME_WAIT remnants (they carry no cgroup).
    pub cgroup_id: Option<u64>,
}

fn words(ip: IpAddr) -> [u8; 16] {
    let mut w = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => w[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => w = v6.octets(),
    }
    w
}

/// The socket whose local end is `peer` and remote end `local` (our
/// accepted socket's addresses), in the agent's netns.
pub fn lookup(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<PeerSock>> {
    let canon = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    };
    let (l, p) = (canon(local), canon(peer));
    if let Some(s) = query(l, p)? {
        return Ok(Some(s));
    }
    // An AF_INET6 client socket talking to a v4 listener through a
    // v4-mapped address.
    if let (SocketAddr::V4(l4), SocketAddr::V4(p4)) = (l, p) {
        let m = |a: std::net::SocketAddrV4| {
            SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
        };
        return query(m(l4), m(p4));
    }
    Ok(None)
}

fn query(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<PeerSock>> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: valid fd and option value.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let family = if peer.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let mut req = Vec::with_capacity(NLMSG_HDR + 56);
    req.extend_from_slice(&((NLMSG_HDR + 56) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
                                                // struct inet_diag_req_v2
    req.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
                                                    // struct inet_diag_sockid: the socket's own end first.
    req.extend_from_slice(&peer.port().to_be_bytes());
    req.extend_from_slice(&local.port().to_be_bytes());
    req.extend_from_slice(&words(peer.ip()));
    req.extend_from_slice(&words(local.ip()));
    req.extend_from_slice(&0u32.to_ne_bytes()); // interface
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: valid fd, buffer and kernel address.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: valid fd and buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..n as usize])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply")
}

fn parse_reply(b: &[u8]) -> io::Result<Option<PeerSock>> {
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    let msg = b.get(..len).ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let err = u32_at(msg, NLMSG_HDR).ok_or_else(bad)? as i32;
        return match -err {
            0 | libc::ENOENT => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(bad());
    }
    let d = NLMSG_HDR;
    let lo = u32_at(msg, d + 44).ok_or_else(bad)?;
    let hi = u32_at(msg, d + 48).ok_or_else(bad)?;
    let cookie = u64::from(lo) | (u64::from(hi) << 32);
    let mut cgroup_id = None;
    let mut at = d + DIAG_MSG;
    while at + 4 <= msg.len() {
        let alen = usize::from(u16_at(msg, at).ok_or_else(bad)?);
        let atype = u16_at(msg, at + 2).ok_or_else(bad)?;
        if alen < 4 {
            break;
        }
        if atype == INET_DIAG_CGROUP_ID && alen >= 12 {
            let v = msg.get(at + 4..at + 12).ok_or_else(bad)?;
            cgroup_id = Some(u64::from_ne_bytes(v.try_into().map_err(|_| bad())?));
        }
        at += (alen + 3) & !3;
    }
    Ok(Some(PeerSock { cookie, cgroup_id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diag_reply_parsing() {
        // NLMSG_ERROR with -ENOENT: no such socket.
        let mut b = vec![0u8; 36];
        b[..4].copy_from_slice(&36u32.to_ne_bytes());
        b[4..6].copy_from_slice(&2u16.to_ne_bytes());
        b[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert!(parse_reply(&b).unwrap().is_none());
        // A socket with a cookie and a cgroup id attribute.
        let total = 16 + 72 + 12;
        let mut b = vec![0u8; total];
        b[..4].copy_from_slice(&(total as u32).to_ne_bytes());
        b[4..6].copy_from_slice(&20u16.to_ne_bytes());
        b[16 + 44..16 + 48].copy_from_slice(&0x1234u32.to_ne_bytes());
        b[16 + 48..16 + 52].copy_from_slice(&0x1u32.to_ne_bytes());
        let at = 16 + 72;
        b[at..at + 2].copy_from_slice(&12u16.to_ne_bytes());
        b[at + 2..at + 4].copy_from_slice(&21u16.to_ne_bytes());
        b[at + 4..at + 12].copy_from_slice(&777u64.to_ne_bytes());
        let s = parse_reply(&b).unwrap().unwrap();
        assert_eq!((s.cookie, s.cgroup_id), ((1 << 32) | 0x1234, Some(777)));
        // Garbage never panics.
        for n in 0..b.len() {
            let _ = parse_reply(&b[..n]);
        }
    }
}
