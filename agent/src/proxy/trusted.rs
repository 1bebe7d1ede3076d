//! The trusted-dialer listeners: connections from processes that are not
//! sandboxes (a node-local worker, a sidecar, an egress relay), attributed
//! by the PROXY protocol v2 header they start with (`crate::proxy_protocol`).
//!
//! A sandbox can never use them:
//!
//! * the kernel-redirect listener never parses PROXY headers — a sandbox that
//!   sends one gets it treated as ordinary bytes (not TLS, not HTTP: refused
//!   or spliced unchanged to its original destination per `nonHttp`);
//! * the trusted listeners ([`Trusted`]) accept a TCP peer only from
//!   `trustedCidrs` **and** only when its socket is not a sandbox socket (the
//!   kernel tag of the peer socket, found through [`sock_diag`], and its
//!   cgroup), and a unix-socket peer only outside the sandbox cgroup tree
//!   (`SO_PEERCRED`).
//!
//! After the header the connection is served like a kernel-redirected one
//! ([`Proxy::dispatch`]), with the header's attribution.
mod sock_diag;

use std::{
    io,
    net::SocketAddr,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{FileTypeExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use egret_common::SockTag;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    task::JoinHandle,
};

use super::{
    detect::{self, Detection, Protocol},
    AttributionSource, Origin, Proxy,
};
use crate::ratelimit::{Reason, LOG};
use crate::{
    bpf::Kernel,
    net::{self, Cidr},
    proxy_protocol::{read_header, Command, ProxyError, Transport},
};

/// How long a trusted dialer has to send its whole header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TrustedError {
    #[error("PROXY protocol listener {addr}: {source}")]
    Bind { addr: String, source: io::Error },
}

/// Settings of the trusted listeners (from `node.proxyProtocol`).
#[derive(Debug, Clone)]
pub struct TrustedOptions {
    pub listen: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub trusted_cidrs: Vec<Cidr>,
    /// cgroup v2 mount and the sandbox root under it (canonical paths).
    pub cgroup_mount: PathBuf,
    pub sandbox_root: PathBuf,
}

/// Counters of the trusted listeners.
#[derive(Debug, Default)]
pub struct TrustedStats {
    pub accepted: AtomicU64,
    /// LOCAL-command connections (health checks), closed after the header.
    pub local: AtomicU64,
    pub refused_untrusted_peer: AtomicU64,
    pub refused_sandbox_peer: AtomicU64,
    pub refused_bad_header: AtomicU64,
    pub refused_no_destination: AtomicU64,
}

impl TrustedStats {
    /// (outcome, count) for every counter, in a fixed order: what /metrics
    /// and /status export.
    pub fn outcomes(&self) -> [(&'static str, u64); 6] {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("accepted", l(&self.accepted)),
            ("local", l(&self.local)),
            ("refused_untrusted_peer", l(&self.refused_untrusted_peer)),
            ("refused_sandbox_peer", l(&self.refused_sandbox_peer)),
            ("refused_bad_header", l(&self.refused_bad_header)),
            ("refused_no_destination", l(&self.refused_no_destination)),
        ]
    }
}

/// Why a peer may not dial (the detail of a `SandboxPeer` refusal).
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("cannot verify the peer: {0}")]
    LocalAddress(#[source] io::Error),
    #[error("peer check: {0}")]
    Join(#[source] tokio::task::JoinError),
    #[error("sock_diag lookup of the peer socket: {0}")]
    Lookup(#[source] io::Error),
    #[error("peer is on this host but its socket cannot be found to verify it")]
    LocalUnverified,
    #[error("peer socket was opened by a sandbox (kernel tag: cgroup {0})")]
    SandboxTagged(u64),
    #[error("peer socket has no cgroup (closed, TIME_WAIT): cannot verify it is not a sandbox")]
    NoCgroup,
    #[error("peer socket belongs to sandbox cgroup {}", .0.display())]
    SandboxCgroup(PathBuf),
    #[error("resolving the peer socket's cgroup {id}: {source}")]
    CgroupPath { id: u64, source: io::Error },
    #[error("peer credentials: {0}")]
    Credentials(#[source] nix::Error),
    #[error("uid {0} may not dial the PROXY protocol socket")]
    Uid(u32),
    #[error("reading the peer's cgroup: {0}")]
    ReadCgroup(#[source] io::Error),
    #[error("the peer has no cgroup v2 membership")]
    NoCgroupV2,
    #[error("pid {pid} is inside the sandbox tree ({cgroup})")]
    InSandboxTree { pid: i32, cgroup: String },
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    UntrustedPeer,
    SandboxPeer,
    BadHeader,
    NoDestination,
}

/// The trusted-dialer listeners: a TCP listener for peers in
/// `trustedCidrs` and a 0600 unix socket, both outside every sandbox.
pub struct Trusted {
    proxy: Arc<Proxy>,
    kernel: Arc<Kernel>,
    opts: TrustedOptions,
    pub stats: TrustedStats,
}

impl Trusted {
    pub fn new(proxy: Arc<Proxy>, kernel: Arc<Kernel>, opts: TrustedOptions) -> Arc<Trusted> {
        Arc::new(Trusted {
            proxy,
            kernel,
            opts,
            stats: TrustedStats::default(),
        })
    }

    /// Binds the configured listeners (in the agent's own netns) and serves
    /// them; the tasks run until aborted.
    pub fn start(self: &Arc<Self>) -> Result<Vec<JoinHandle<()>>, TrustedError> {
        let mut tasks = Vec::new();
        if let Some(addr) = self.opts.listen {
            let bind_err = |source| TrustedError::Bind {
                addr: addr.to_string(),
                source,
            };
            let l = net::bind(addr).map_err(bind_err)?;
            let l = TcpListener::from_std(l).map_err(bind_err)?;
            tracing::info!(%addr, cidrs = ?self.opts.trusted_cidrs.iter().map(Cidr::to_string).collect::<Vec<_>>(), "PROXY protocol listener open (TCP)");
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.accept_tcp(l).await }));
        }
        if let Some(path) = &self.opts.unix_socket {
            let l = bind_unix(path).map_err(|source| TrustedError::Bind {
                addr: path.display().to_string(),
                source,
            })?;
            tracing::info!(path = %path.display(), "PROXY protocol listener open (unix)");
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.accept_unix(l).await }));
        }
        Ok(tasks)
    }

    /// Removes the unix socket file (at shutdown).
    pub fn cleanup(&self) {
        if let Some(p) = &self.opts.unix_socket {
            let _ = std::fs::remove_file(p);
        }
    }

    async fn accept_tcp(self: Arc<Self>, l: TcpListener) {
        loop {
            match l.accept().await {
                Ok((stream, peer)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.serve_tcp(stream, peer).await });
                }
                Err(e) => {
                    if let Some(suppressed) = LOG.check(Reason::Accept) {
                        tracing::warn!(suppressed, "PROXY protocol accept: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn accept_unix(self: Arc<Self>, l: UnixListener) {
        loop {
            match l.accept().await {
                Ok((stream, _)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.serve_unix(stream).await });
                }
                Err(e) => {
                    if let Some(suppressed) = LOG.check(Reason::Accept) {
                        tracing::warn!(suppressed, "PROXY protocol accept (unix): {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn refuse(&self, why: Refusal, peer: &str, detail: &dyn std::fmt::Display) {
        let (counter, reason) = match why {
            Refusal::UntrustedPeer => (
                &self.stats.refused_untrusted_peer,
                Reason::ProxyUntrustedPeer,
            ),
            Refusal::SandboxPeer => (&self.stats.refused_sandbox_peer, Reason::ProxySandboxPeer),
            Refusal::BadHeader => (&self.stats.refused_bad_header, Reason::ProxyBadHeader),
            Refusal::NoDestination => (
                &self.stats.refused_no_destination,
                Reason::ProxyNoDestination,
            ),
        };
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        // Every refusal is counted; the log gets a few lines per reason per
        // interval (`crate::ratelimit`), so a scan cannot flood it.
        if let Some(suppressed) = LOG.check(reason) {
            tracing::warn!(peer, reason = ?why, refused = n, suppressed, "PROXY protocol: refused a connection: {detail}");
        }
    }

    async fn serve_tcp(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let ip = net::canonical(peer.ip());
        if !self.opts.trusted_cidrs.iter().any(|c| c.contains(ip)) {
            self.refuse(
                Refusal::UntrustedPeer,
                &peer.to_string(),
                &"source address outside trustedCidrs",
            );
            return;
        }
        let local = match stream.local_addr() {
            Ok(l) => l,
            Err(e) => {
                let why = PeerError::LocalAddress(e);
                self.refuse(Refusal::SandboxPeer, &peer.to_string(), &why);
                return;
            }
        };
        if let Err(why) = self.check_not_sandbox(local, peer).await {
            self.refuse(Refusal::SandboxPeer, &peer.to_string(), &why);
            return;
        }
        self.serve_stream(stream, peer.to_string()).await;
    }

    async fn serve_unix(self: Arc<Self>, stream: UnixStream) {
        let peer = match unix_peer(&stream, &self.opts.cgroup_mount, &self.opts.sandbox_root) {
            Ok(p) => p,
            Err(why) => {
                self.refuse(Refusal::SandboxPeer, "unix", &why);
                return;
            }
        };
        self.serve_stream(stream, peer).await;
    }

    /// Ok when the TCP peer is provably not a sandbox socket. A peer socket
    /// on this host is looked up with `sock_diag` (4-tuple exact): refused
    /// when the kernel tagged it (a sandbox opened it), when its cgroup is
    /// in the sandbox tree, or when it cannot be verified (already gone,
    /// only a TIME_WAIT remnant). A peer that is not on this host's netns
    /// (another host, or a sandbox's own netns) cannot be checked here:
    /// `trustedCidrs` must not cover sandbox addresses.
    async fn check_not_sandbox(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<(), PeerError> {
        let found = tokio::task::spawn_blocking(move || sock_diag::lookup(local, peer))
            .await
            .map_err(PeerError::Join)?
            .map_err(PeerError::Lookup)?;
        let Some(sock) = found else {
            if net::canonical(peer.ip()).is_loopback() || net::is_local_address(peer.ip()) {
                return Err(PeerError::LocalUnverified);
            }
            return Ok(());
        };
        if let Some(tag) = self.kernel.maps.tag(sock.cookie) {
            return Err(PeerError::SandboxTagged(tag.cgroup_id));
        }
        let Some(cg) = sock.cgroup_id else {
            return Err(PeerError::NoCgroup);
        };
        match cgroup_path(&self.opts.cgroup_mount, cg) {
            Ok(p) if p.starts_with(&self.opts.sandbox_root) => Err(PeerError::SandboxCgroup(p)),
            Ok(_) => Ok(()),
            Err(source) => Err(PeerError::CgroupPath { id: cg, source }),
        }
    }

    /// Reads the header and serves the connection behind it like a
    /// kernel-redirected one, with the header's attribution.
    async fn serve_stream<S>(&self, mut stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let header = match read_header(&mut stream, HEADER_TIMEOUT).await {
            Ok(h) => h,
            // Connected and closed without a byte: a plain TCP health check.
            Err(ProxyError::Closed(0)) => {
                tracing::debug!(peer, "PROXY protocol: connection closed before any byte");
                return;
            }
            Err(e) => {
                self.refuse(Refusal::BadHeader, &peer, &e);
                return;
            }
        };
        if header.command == Command::Local {
            self.stats.local.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                peer,
                "PROXY protocol LOCAL connection (health check) closed"
            );
            return;
        }
        if header.transport != Transport::Stream {
            self.refuse(Refusal::NoDestination, &peer, &"transport is not TCP");
            return;
        }
        let Some(dst) = header
            .addresses
            .dst()
            .filter(|d| d.port() != 0 && !d.ip().is_unspecified())
        else {
            self.refuse(
                Refusal::NoDestination,
                &peer,
                &"no IP destination in the header",
            );
            return;
        };
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer, %dst, invocation = header.attribution.as_ref().map(|a| a.invocation_id.as_str()), "PROXY protocol connection");
        let origin = Origin {
            cookie: 0,
            tag: SockTag::default(),
            dst,
            attribution: header.attribution,
            netns: None,
            source: AttributionSource::ProxyProtocol,
            authority: header.authority,
        };
        let (detection, stream) = detect::detect(stream, detect::TIMEOUT).await;
        let protocol = match detection {
            Detection::Known(p) => p,
            // Server speaks first: nothing to detect.
            Detection::Silent => Protocol::Other,
            Detection::Closed => return,
            Detection::Failed(e) => {
                tracing::debug!(peer, "PROXY protocol connection: {e}");
                return;
            }
        };
        self.proxy.dispatch(stream, origin, protocol).await;
    }
}

/// Binds the unix socket 0600 (created under a tight umask so it is never
/// briefly wider); a missing parent directory is created 0700.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(_) => {}
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The unix peer's description when it may dial: root or the agent's own
/// user, and not inside the sandbox cgroup tree.
fn unix_peer(stream: &UnixStream, mount: &Path, sandbox_root: &Path) -> Result<String, PeerError> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(PeerError::Credentials)?;
    let uid = cred.uid();
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Err(PeerError::Uid(uid));
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", cred.pid()))
        .map_err(PeerError::ReadCgroup)?;
    let rel = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(PeerError::NoCgroupV2)?;
    let path = mount.join(rel.trim_start_matches('/'));
    if path.starts_with(sandbox_root) {
        return Err(PeerError::InSandboxTree {
            pid: cred.pid(),
            cgroup: rel.to_owned(),
        });
    }
    Ok(format!("unix pid {} uid {uid}", cred.pid()))
}

/// Path of the cgroup with id `id` (its kernfs inode), through a kernfs
/// file handle on the cgroup v2 mount.
fn cgroup_path(mount: &Path, id: u64) -> io::Result<PathBuf> {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: [u8; 8],
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let dir = std::fs::File::open(mount)?;
    let mut h = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id: id.to_ne_bytes(),
    };
    // SAFETY: `h` is a valid `struct file_handle` with 8 bytes of handle
    // data; the returned fd (if any) is owned below.
    let fd = unsafe {
        libc::open_by_handle_at(
            dir.as_raw_fd(),
            (&mut h as *mut KernfsHandle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl crate::admin::Report for Trusted {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        let series: Vec<_> = self
            .stats
            .outcomes()
            .into_iter()
            .map(|(outcome, v)| (vec![("result", outcome.to_owned())], v))
            .collect();
        m.counter(
            "egret_proxy_protocol_connections",
            "Connections the trusted-dialer (PROXY protocol) listeners handled, by result",
            &series,
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        s.insert(
            "proxy_protocol".into(),
            serde_json::json!(self
                .stats
                .outcomes()
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SO_COOKIE` of a socket (what the kernel programs key tags by).
    fn socket_cookie(fd: &impl AsRawFd) -> u64 {
        let mut v: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: valid fd, out-pointer sized for u64.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&mut v as *mut u64).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        v
    }

    #[test]
    fn sock_diag_finds_the_peer_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, peer) = l.accept().unwrap();
        let local = server.local_addr().unwrap();
        let s = sock_diag::lookup(local, peer)
            .unwrap()
            .expect("the client socket");
        assert_eq!(s.cookie, socket_cookie(&client));
        let cg = s.cgroup_id.expect("a live socket has a cgroup");
        // Our own peer address the other way round is the server socket,
        // a different cookie.
        let back = sock_diag::lookup(peer, local)
            .unwrap()
            .expect("the server socket");
        assert_eq!(back.cookie, socket_cookie(&server));
        // Nobody on this port.
        let gone = sock_diag::lookup(local, SocketAddr::from(([127, 0, 0, 1], 1))).unwrap();
        assert!(gone.is_none());
        // Resolving the cgroup needs CAP_DAC_READ_SEARCH and cgroup v2.
        if nix::unistd::geteuid().is_root() {
            if let Ok(mount) = crate::cgroup::detect_mount() {
                let own = crate::cgroup::of_pid(std::process::id()).unwrap();
                let path = cgroup_path(&mount, cg).unwrap();
                assert_eq!(
                    path,
                    mount
                        .canonicalize()
                        .unwrap()
                        .join(own.trim_start_matches('/'))
                );
            }
        }
    }
}
