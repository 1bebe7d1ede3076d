//! Network namespaces: doing socket work inside a sandbox's netns.
//!
//! A socket belongs to the netns of the thread that created it. Listeners
//! for a sandbox with its own netns, and the agent's upstream sockets for
//! its connections, are created on a short-lived thread that has entered the
//! sandbox's netns; the tokio runtime itself never changes namespace.
use std::{
    fs::File,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

/// Runs `f` on a thread inside the netns at `path` (None = the agent's own).
pub fn run_in<T, F>(path: Option<&Path>, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let Some(path) = path else {
        return f();
    };
    let file = File::open(path)?;
    let handle = std::thread::Builder::new()
        .name("egret-netns".into())
        .spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            f()
        })?;
    handle
        .join()
        .map_err(|_| io::Error::other("netns worker thread panicked"))?
}

/// `SO_NETNS_COOKIE` of a socket: the same value `bpf_get_netns_cookie` gives.
pub fn socket_netns_cookie(fd: impl AsFd) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer sized for u64.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// The cookie of the calling thread's own network namespace.
pub fn own_netns_cookie() -> io::Result<u64> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket_netns_cookie(&s)
}

/// Path of a named netns created by `ip netns add`.
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Every address configured in the agent's own netns (the node's
/// addresses, veth host ends included): a sandbox in another netns reaches
/// a wildcard listener of the agent through any of them.
pub fn own_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    let mut out = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            out.push(std::net::IpAddr::V4(v4.ip()));
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            out.push(std::net::IpAddr::V6(v6.ip()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
