//! The redirect listeners: one pair (127.0.0.1 and ::1 on `node.listenPort`)
//! in the agent's netns and one in every registered sandbox netns, shared
//! by the sandboxes in it (its holders). Each accepted connection is matched
//! to the sandbox socket that made it through the kernel's link map (client
//! address inside that netns) → its [`Origin`]; a connection with no link
//! was not redirected by the kernel and is refused.
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use egret_common::{LinkKey, AF_INET, AF_INET6};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::{
    detect::{self, Detection, Protocol},
    AttributionSource, Origin, Proxy,
};
use crate::ratelimit::{Reason, LOG};
use crate::{flow::orig_dst, net, netns};

/// One netns's redirect listeners and the sandboxes that use them.
pub(super) struct NetnsListeners {
    tasks: Vec<JoinHandle<()>>,
    holders: HashSet<String>,
}

/// A netns's identity: the inode of its nsfs file (the same for every path
/// naming it); 0 for the agent's own.
fn netns_key(netns: Option<&Path>) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    match netns {
        None => Ok(0),
        Some(p) => Ok(std::fs::metadata(p)?.ino()),
    }
}

fn words_v4(ip: std::net::Ipv4Addr) -> [u32; 4] {
    [u32::from_ne_bytes(ip.octets()), 0, 0, 0]
}

fn words_v6(ip: std::net::Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    let mut w = [0u32; 4];
    for (i, c) in o.chunks_exact(4).enumerate() {
        w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

/// Link-map keys a peer address may have been stored under.
fn link_keys(netns_cookie: u64, peer: SocketAddr) -> [LinkKey; 2] {
    let port = u32::from(peer.port());
    match peer.ip() {
        IpAddr::V4(v4) => [
            LinkKey {
                netns_cookie,
                addr: words_v4(v4),
                port,
                family: u32::from(AF_INET),
            },
            // An AF_INET6 client socket talking to a v4-mapped destination.
            LinkKey {
                netns_cookie,
                addr: words_v6(v4.to_ipv6_mapped()),
                port,
                family: u32::from(AF_INET6),
            },
        ],
        IpAddr::V6(v6) => {
            let k = LinkKey {
                netns_cookie,
                addr: words_v6(v6),
                port,
                family: u32::from(AF_INET6),
            };
            [k, k]
        }
    }
}

impl Proxy {
    /// Opens the listener pair in `netns` (None = the agent's own, held
    /// for the agent's life) for `holder` (a sandbox id), or adds `holder`
    /// to the pair already open there — under whatever path the netns is
    /// named.
    pub fn ensure_listeners(
        self: &Arc<Self>,
        netns: Option<&Path>,
        holder: &str,
    ) -> std::io::Result<()> {
        let key = netns_key(netns)?;
        let mut map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&key) {
            open.holders.insert(holder.to_owned());
            return Ok(());
        }
        let port = self.port;
        let path = netns.map(Path::to_owned);
        let bound = netns::run_in(netns, move || {
            let v4 = net::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
            let v6 = net::bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).ok();
            Ok((v4, v6))
        })?;
        let mut tasks = Vec::new();
        for l in [Some(bound.0), bound.1].into_iter().flatten() {
            let cookie = netns::socket_netns_cookie(&l)?;
            let listener = TcpListener::from_std(l)?;
            let me = self.clone();
            let ns = path.clone();
            tasks.push(tokio::spawn(async move {
                me.accept_loop(listener, cookie, ns).await
            }));
        }
        tracing::info!(netns = ?path, port, "redirect listeners open");
        map.insert(
            key,
            NetnsListeners {
                tasks,
                holders: std::iter::once(holder.to_owned()).collect(),
            },
        );
        Ok(())
    }

    /// `holder` no longer uses the listeners of `netns`; the last one out
    /// closes them (connections already accepted go on). A netns that is
    /// gone already closed its listeners' sockets with it.
    pub fn release_listeners(&self, netns: &Path, holder: &str) {
        let mut map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let key = match netns_key(Some(netns)) {
            Ok(k) => Some(k),
            // The netns file is gone: find the holder wherever it is.
            Err(_) => map
                .iter()
                .find(|(k, l)| **k != 0 && l.holders.contains(holder))
                .map(|(k, _)| *k),
        };
        let Some(key) = key.filter(|k| *k != 0) else {
            return;
        };
        if let Some(open) = map.get_mut(&key) {
            open.holders.remove(holder);
            if open.holders.is_empty() {
                for t in &open.tasks {
                    t.abort();
                }
                map.remove(&key);
            }
        }
    }

    /// Network namespaces with listeners open, and how many sandboxes use
    /// each (for `/status` and tests).
    pub fn listener_holders(&self) -> Vec<usize> {
        let map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|l| l.holders.len()).collect()
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        netns_cookie: u64,
        netns: Option<PathBuf>,
    ) {
        let drain = &self.l7.drain;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                // Draining: the listener closes, new connects are refused.
                _ = drain.started.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Responses go out as several writes (h2 HEADERS then
                    // DATA, TLS records): with Nagle on, a small second
                    // write waits for the sandbox's delayed ACK (~40 ms).
                    let _ = stream.set_nodelay(true);
                    let me = self.clone();
                    let ns = netns.clone();
                    drain.spawn(async move {
                        let forced = me.l7.drain.forced.clone();
                        tokio::select! {
                            biased;
                            () = me.serve(stream, peer, netns_cookie, ns) => {}
                            // Backstop for connections not served by hyper
                            // (detection, TLS handshake, splice).
                            () = forced.cancelled() => {}
                        }
                    });
                }
                Err(e) => {
                    if let Some(suppressed) = LOG.check(Reason::Accept) {
                        tracing::warn!(suppressed, "accept: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Finds the sandbox socket behind an accepted connection.
    pub fn origin(
        &self,
        netns_cookie: u64,
        peer: SocketAddr,
        netns: Option<PathBuf>,
    ) -> Option<Origin> {
        let cookie = link_keys(netns_cookie, peer)
            .iter()
            .find_map(|k| self.kernel.maps.link(k))?;
        let tag = self.kernel.maps.tag(cookie)?;
        Some(Origin {
            cookie,
            dst: orig_dst(&tag),
            attribution: self.registry.resolve(tag.attr),
            tag,
            netns,
            source: AttributionSource::Kernel,
            authority: None,
        })
    }

    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        netns_cookie: u64,
        netns: Option<PathBuf>,
    ) {
        let Some(origin) = self.origin(netns_cookie, peer, netns) else {
            self.stats.refused_unlinked.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = LOG.check(Reason::RefusedUnlinked) {
                tracing::warn!(%peer, suppressed, "refused a connection the kernel did not redirect");
            }
            return;
        };
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let (detection, stream) = detect::detect(stream, detect::TIMEOUT).await;
        let protocol = match detection {
            Detection::Known(p) => p,
            // Silence (server speaks first), a close or a failed read: not
            // HTTP.
            Detection::Silent | Detection::Closed | Detection::Failed(_) => Protocol::Other,
        };
        self.dispatch(stream, origin, protocol).await;
    }
}
