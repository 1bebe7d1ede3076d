//! Types shared by the kernel half (`egret-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of padding surprises and
//! `no_std`: the same bytes are written by BPF programs and read by the agent
//! through Aya maps. The `user` feature adds `aya::Pod` impls for the agent.
#![no_std]

/// Address family values as the kernel uses them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `SockTag::flags`: the connection was rewritten to the agent's listener.
pub const TAG_REDIRECTED: u8 = 1;
/// `SockTag::flags`: the socket's cgroup was registered (slot/generation valid).
pub const TAG_ATTRIBUTED: u8 = 2;
/// The socket counts against its sandbox's socket quota
/// (`EGRET_SANDBOX_SOCKETS`); given back when the tag goes.
pub const TAG_COUNTED: u8 = 4;

/// Transport protocol numbers stored in `SockTag::proto`.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Which attribution a sandbox cgroup currently has. `generation` changes each
/// time the sandbox is registered again, so a socket opened under an earlier
/// registration keeps pointing at that registration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrRef {
    pub slot: u32,
    pub generation: u32,
}

/// Everything the kernel knows about a sandbox socket at `connect()` time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockTag {
    /// Sandbox cgroup id (inode of the cgroup v2 directory under the root).
    pub cgroup_id: u64,
    /// `bpf_get_netns_cookie` of the socket's network namespace.
    pub netns_cookie: u64,
    /// `bpf_ktime_get_ns` at connect.
    pub start_ns: u64,
    /// `bpf_get_current_pid_tgid`: tgid in the upper 32 bits.
    pub pid_tgid: u64,
    pub attr: AttrRef,
    /// Original destination address, network byte order words (v4 in `[0]`).
    pub orig_addr: [u32; 4],
    /// Original destination port, host byte order.
    pub orig_port: u16,
    pub family: u16,
    pub proto: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Per-socket payload counters from `cgroup_skb`, kept per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbCounters {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_segs: u64,
    pub rx_segs: u64,
    /// Ingress segments carrying FIN, as the hook saw them (before TCP
    /// decided whether to accept them).
    pub rx_fin: u64,
    /// Sequence number just past the peer's FIN (`seq + payload + 1` of a
    /// FIN segment), when `rx_fin > 0`: `bytes_received` counts the FIN
    /// exactly when the socket's `rcv_nxt` reached it.
    pub rx_fin_end_seq: u64,
}

impl SkbCounters {
    pub fn add(&mut self, other: &SkbCounters) {
        self.tx_bytes += other.tx_bytes;
        self.rx_bytes += other.rx_bytes;
        self.tx_segs += other.tx_segs;
        self.rx_segs += other.rx_segs;
        self.rx_fin += other.rx_fin;
        // Every copy of the FIN (retransmissions, any CPU) ends at the same
        // sequence number.
        if other.rx_fin > 0 {
            self.rx_fin_end_seq = other.rx_fin_end_seq;
        }
    }
}

/// Sent on the ring buffer when a tagged TCP socket reaches `TCP_CLOSE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub cookie: u64,
    pub end_ns: u64,
    /// The kernel's own TCP counters at close (`tcp_sock.bytes_acked` etc.).
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    /// TCP state the socket left for `TCP_CLOSE` (tells whether our FIN was acked).
    pub old_state: u32,
    /// The next sequence number the socket expected from the peer at
    /// close (`tcp_sock.rcv_nxt`): past the peer's FIN iff TCP accepted it.
    pub rcv_nxt: u32,
    pub tag: SockTag,
}

/// TCP states (net/tcp_states.h) from which reaching `TCP_CLOSE` means the
/// socket's own FIN was acknowledged.
pub const FIN_ACKED_STATES: [u32; 4] = [
    5,  /* FIN_WAIT2 */
    6,  /* TIME_WAIT */
    9,  /* LAST_ACK */
    11, /* CLOSING */
];

impl CloseEvent {
    /// Payload bytes received in order. `bytes_received` counts the peer's
    /// FIN in sequence space when TCP accepted it before the socket closed,
    /// which is when `rcv_nxt` reached the FIN's end (`fin_end_seq`, from
    /// the ingress hook). A FIN the hook saw that TCP never processed (the
    /// socket closed first, e.g. into FIN_WAIT2's timewait) is not counted.
    pub fn payload_received(&self, fin_end_seq: Option<u32>) -> u64 {
        let fin_counted = fin_end_seq.is_some_and(|end| end == self.rcv_nxt);
        self.bytes_received.saturating_sub(u64::from(fin_counted))
    }

    /// Payload bytes the peer acknowledged: `bytes_acked` counts the SYN and
    /// the FIN in sequence space, this does not.
    pub fn payload_acked(&self) -> u64 {
        let syn = u64::from(self.bytes_acked > 0);
        let fin = u64::from(FIN_ACKED_STATES.contains(&self.old_state));
        self.bytes_acked.saturating_sub(syn + fin)
    }
}

/// Key linking a redirected sandbox socket to the connection the agent
/// accepts: the client's own address and port inside its network namespace.
/// (The destination is always the agent's listener, so this is exact.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub netns_cookie: u64,
    /// Client address, network byte order words (v4 in `[0]`).
    pub addr: [u32; 4],
    /// Client port, host byte order.
    pub port: u32,
    pub family: u32,
}

/// One sandbox's share of the per-socket maps (`EGRET_SANDBOX_SOCKETS`,
/// by sandbox cgroup id): so one sandbox cannot fill the maps every
/// sandbox's attribution lives in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SandboxShare {
    /// Tagged sockets the sandbox holds now.
    pub sockets: u32,
    /// Connects refused because it was at `KConfig::max_sockets_per_sandbox`.
    pub refused: u32,
    /// Close events put on the ring buffer (wrapping); the agent writes
    /// how many it has read to `EGRET_SANDBOX_CLOSES_READ`.
    pub closes_out: u32,
    /// Close events not put on the ring buffer: the sandbox already had
    /// `KConfig::max_pending_closes_per_sandbox` unread there.
    pub closes_dropped: u32,
}

impl SandboxShare {
    /// Whether another close event of this sandbox may go on the ring
    /// buffer, with `read` of its events read by the agent. A difference
    /// that went negative (an entry evicted and made again) never refuses.
    #[inline(always)]
    pub fn may_queue_close(&self, read: u32, max: u32) -> bool {
        let pending = self.closes_out.wrapping_sub(read);
        max == 0 || (pending as i32) < 0 || pending < max
    }
}

/// Node-wide settings the programs read (single-entry array `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KConfig {
    /// Agent listener port, host byte order; 0 disables redirection.
    pub listen_port: u16,
    /// 1 = refuse UDP to every port but DNS (53) from sandboxes; 0 = only
    /// the ports in `EGRET_UDP_PORTS` (443 when `blockQuic`: QUIC cannot
    /// bypass capture). See [`KConfig::udp_refused`].
    pub udp_all_but_dns: u8,
    /// 1 = refuse raw (`SOCK_RAW`) and packet (`AF_PACKET`) sockets in
    /// sandboxes: they would bypass the redirect (`cgroup/sock_create`).
    pub block_raw: u8,
    /// cgroup v2 level of the sandbox root; sandboxes are its children.
    pub root_level: u32,
    /// Tagged TCP sockets one sandbox may hold at once (0 = no quota); a
    /// connect beyond it is refused (EPERM).
    pub max_sockets_per_sandbox: u32,
    /// Close events of one sandbox that may wait unread on the ring buffer
    /// (0 = no quota); beyond it they are dropped and counted for it.
    pub max_pending_closes_per_sandbox: u32,
    /// Network namespace cookie of the agent (where its listeners are).
    pub agent_netns: u64,
    /// The agent's own TCP endpoints (admin, PROXY-protocol listener), which
    /// sandboxes may not connect to by any address form (see
    /// [`KConfig::agent_endpoint_refused`]). Unused entries have port 0.
    pub guarded: [Guarded; MAX_GUARDED],
}

/// DNS stays reachable when all other UDP is refused.
pub const DNS_PORT: u16 = 53;

/// How many agent endpoints [`KConfig::guarded`] holds.
pub const MAX_GUARDED: usize = 4;

/// One agent TCP endpoint refused to sandboxes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Guarded {
    /// Port, host order; 0 = unused entry.
    pub port: u16,
    /// Family of `addr`; 0 = the listener is on a wildcard address.
    pub family: u16,
    pub _pad: u32,
    /// Listener address, network byte order words (v4 in `[0]`).
    pub addr: [u32; 4],
}

/// Key of the `NODE_ADDRS` map: an address of the agent's netns (the node's
/// addresses, veth host ends included), normalized as [`normalize`] does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub family: u32,
    pub addr: [u32; 4],
}

/// A destination as (family, words) with an IPv4-mapped IPv6 address turned
/// into plain IPv4 (an `AF_INET6` socket reaches IPv4 peers v4-mapped).
#[inline(always)]
pub fn normalize(family: u16, dst: &[u32; 4]) -> NodeAddr {
    if family == AF_INET6 && dst[0] == 0 && dst[1] == 0 && dst[2] == 0xffff_u32.to_be() {
        NodeAddr {
            family: AF_INET as u32,
            addr: [dst[3], 0, 0, 0],
        }
    } else if family == AF_INET {
        NodeAddr {
            family: AF_INET as u32,
            addr: [dst[0], 0, 0, 0],
        }
    } else {
        NodeAddr {
            family: family as u32,
            addr: *dst,
        }
    }
}

/// Whether a (normalized) destination is one the kernel turns into a
/// loopback connect: the unspecified address (`0.0.0.0`, `::`, and
/// `::ffff:0.0.0.0` once normalized) or any loopback address (127/8, ::1).
#[inline(always)]
pub fn is_local(a: &NodeAddr) -> bool {
    if a.family == AF_INET as u32 {
        let first = a.addr[0].to_ne_bytes()[0];
        a.addr[0] == 0 || first == 127
    } else {
        a.addr[0] == 0
            && a.addr[1] == 0
            && a.addr[2] == 0
            && (a.addr[3] == 0 || a.addr[3] == 1u32.to_be())
    }
}

impl KConfig {
    /// Whether a sandbox TCP connect to `dst` (`family`, network-order words
    /// as in [`SockTag::orig_addr`]) port `port` from netns `netns` could
    /// reach one of the agent's own endpoints, and must be refused. For a
    /// guarded port, refused are:
    /// * from the agent's netns: every local form (unspecified, 127/8, ::1,
    ///   v4-mapped), and any address at all when the listener is on a
    ///   wildcard address;
    /// * from any netns: the listener's own address, and — when the listener
    ///   is on a wildcard address — every node address (`node_addr`: the
    ///   destination is in `NODE_ADDRS`, e.g. the host end of a sandbox's
    ///   veth).
    ///
    /// Sockets in a sandbox's own netns reaching "local" forms reach that
    /// netns's own loopback, where no agent endpoint listens.
    #[inline(always)]
    pub fn agent_endpoint_refused(
        &self,
        port: u16,
        family: u16,
        dst: &[u32; 4],
        netns: u64,
        node_addr: bool,
    ) -> bool {
        let d = normalize(family, dst);
        let in_agent_netns = netns == self.agent_netns;
        let local = is_local(&d);
        let mut i = 0;
        while i < MAX_GUARDED {
            let g = &self.guarded[i];
            i += 1;
            if g.port == 0 || g.port != port {
                continue;
            }
            if in_agent_netns && local {
                return true;
            }
            if g.family == 0 {
                if in_agent_netns || node_addr {
                    return true;
                }
                continue;
            }
            // A loopback listener is only reachable from the agent's netns
            // (the local forms above); elsewhere 127.0.0.1 is another host.
            let g_local = is_local(&NodeAddr {
                family: g.family as u32,
                addr: g.addr,
            });
            let same = !g_local
                && g.family as u32 == d.family
                && if d.family == AF_INET as u32 {
                    g.addr[0] == d.addr[0]
                } else {
                    g.addr == d.addr
                };
            if same {
                return true;
            }
        }
        false
    }

    /// Whether a sandbox UDP connect/sendmsg to `port` is refused; `listed`:
    /// the port is in `EGRET_UDP_PORTS`.
    #[inline(always)]
    pub fn udp_refused(&self, port: u16, listed: bool) -> bool {
        if self.udp_all_but_dns != 0 {
            port != DNS_PORT
        } else {
            listed
        }
    }

    /// Whether `port` is one of the guarded endpoints' ports (so the program
    /// only looks the destination up in `NODE_ADDRS` when it matters).
    #[inline(always)]
    pub fn guards_port(&self, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_GUARDED {
            if self.guarded[i].port != 0 && self.guarded[i].port == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Indices into the per-CPU `STATS` array.
pub mod stat {
    /// Close events the ring buffer had no room for.
    pub const RINGBUF_DROPS: u32 = 0;
    /// Sockets that reached close without a tag (evicted or opened before attach).
    pub const CLOSE_WITHOUT_TAG: u32 = 1;
    /// connect() from a sandbox cgroup that is not registered.
    pub const UNATTRIBUTED_CONNECTS: u32 = 2;
    /// Tag map insert failures.
    pub const TAG_INSERT_FAILED: u32 = 3;
    /// Redirects to the agent listener.
    pub const REDIRECTS: u32 = 4;
    /// UDP/443 datagrams or connects refused.
    pub const QUIC_REFUSED: u32 = 5;
    /// Link map insert failures.
    pub const LINK_INSERT_FAILED: u32 = 6;
    /// Counter map insert failures.
    pub const COUNTER_INSERT_FAILED: u32 = 7;
    /// Sandbox connects to the agent's admin listener, refused.
    pub const ADMIN_REFUSED: u32 = 8;
    /// Raw or packet sockets a sandbox tried to create, refused.
    pub const RAW_SOCKET_REFUSED: u32 = 9;
    /// Tags of sockets released without ever reaching a state callback
    /// (connect failed before the handshake), removed at release.
    pub const TAGS_RELEASED: u32 = 10;
    /// UDP datagrams or connects to ports other than 443 refused
    /// (`blockUdpPorts`, `blockAllUdpExceptDns`).
    pub const UDP_REFUSED: u32 = 11;
    /// TCP connects refused: the sandbox held its socket quota.
    pub const SOCKET_QUOTA_REFUSED: u32 = 12;
    /// Close events dropped because their sandbox had its share of the
    /// ring buffer unread (per sandbox: `SandboxShare::closes_dropped`).
    pub const CLOSES_OVER_SHARE: u32 = 13;
    pub const COUNT: u32 = 14;
    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_drops",
        "close_without_tag",
        "unattributed_connects",
        "tag_insert_failed",
        "redirects",
        "quic_refused",
        "link_insert_failed",
        "counter_insert_failed",
        "admin_refused",
        "raw_socket_refused",
        "tags_released",
        "udp_refused",
        "socket_quota_refused",
        "closes_over_share",
    ];
}

/// Map sizes: every map is bounded.
pub mod limits {
    pub const MAX_SANDBOXES: u32 = 16_384;
    pub const MAX_SOCKETS: u32 = 262_144;
    pub const MAX_CAPTURE_PORTS: u32 = 64;
    pub const MAX_NODE_ADDRS: u32 = 1024;
    pub const RINGBUF_BYTES: u32 = 1 << 22;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for AttrRef {}
    unsafe impl aya::Pod for SockTag {}
    unsafe impl aya::Pod for SkbCounters {}
    unsafe impl aya::Pod for CloseEvent {}
    unsafe impl aya::Pod for LinkKey {}
    unsafe impl aya::Pod for KConfig {}
    unsafe impl aya::Pod for NodeAddr {}
    unsafe impl aya::Pod for SandboxShare {}
}
