//! egret's kernel half: cgroup programs attached at the sandbox root cgroup.
//!
//! * `connect4`/`connect6` tag every TCP socket a sandbox opens (cookie →
//!   [`SockTag`]) and rewrite captured ports to the agent's listener; UDP/443
//!   and other UDP ports are refused per `KConfig::udp_refused` (also in `sendmsg4/6`),
//!   and so are TCP connects to the agent's admin listener.
//! * `getpeername4/6` keep the sandbox seeing its original peer.
//! * `sock_ops` links a redirected socket to the agent's accepted socket
//!   (`LINKS`, keyed by the client address inside its netns) and reports the
//!   socket's end on the `CLOSES` ring buffer with the kernel's TCP counters.
//! * `cgroup_skb` ingress/egress count TCP payload bytes and segments per
//!   socket (GSO/GRO aware) into a per-CPU LRU map.
//!
//! Every map is bounded; anything that cannot be recorded is counted in
//! `STATS` so the agent can report it.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no `core::sync::atomic` types; this is
// the `__sync_fetch_and_add` the kernel's own BPF programs use.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr, bpf_sock_ops},
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_get_netns_cookie,
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sock_ops_cb_flags_set,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use egret_common::{
    limits, normalize, stat, AttrRef, CloseEvent, KConfig, LinkKey, NodeAddr, SandboxShare,
    SkbCounters, SockTag, AF_INET, AF_INET6, PROTO_TCP, TAG_ATTRIBUTED, TAG_COUNTED,
    TAG_REDIRECTED,
};

/// Sandbox cgroup id → current attribution.
#[map(name = "EGRET_ATTR")]
static ATTR: HashMap<u64, AttrRef> = HashMap::pinned(limits::MAX_SANDBOXES, 0);

/// Socket cookie → tag taken at connect.
#[map(name = "EGRET_TAGS")]
static TAGS: LruHashMap<u64, SockTag> = LruHashMap::pinned(limits::MAX_SOCKETS, 0);

/// Client address of a redirected socket → its cookie.
#[map(name = "EGRET_LINKS")]
static LINKS: LruHashMap<LinkKey, u64> = LruHashMap::pinned(limits::MAX_SOCKETS, 0);

/// Socket cookie → payload counters (per CPU; the agent sums).
#[map(name = "EGRET_COUNTERS")]
static COUNTERS: LruPerCpuHashMap<u64, SkbCounters> =
    LruPerCpuHashMap::pinned(limits::MAX_SOCKETS, 0);

/// Destination ports (host order) redirected to the agent.
#[map(name = "EGRET_PORTS")]
static PORTS: HashMap<u16, u8> = HashMap::pinned(limits::MAX_CAPTURE_PORTS, 0);

/// Addresses of the agent's netns (node addresses, veth host ends): a
/// sandbox in its own netns reaches a wildcard agent listener through them.
#[map(name = "EGRET_NODE_ADDRS")]
static NODE_ADDRS: HashMap<NodeAddr, u8> = HashMap::pinned(limits::MAX_NODE_ADDRS, 0);

/// Sandbox cgroup id → its share of the per-socket maps.
#[map(name = "EGRET_SANDBOX_SOCKETS")]
static SANDBOX_SOCKETS: LruHashMap<u64, SandboxShare> =
    LruHashMap::pinned(limits::MAX_SANDBOXES * 2, 0);

/// Atomically adds `v` (wrapping: `u32::MAX` takes one away) to a counter
/// in a map value shared by every CPU.
#[inline(always)]
fn atomic_add(p: *mut u32, v: u32) {
    unsafe {
        core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
}

/// Sandbox cgroup id → close events of it the agent has read (written by
/// the agent only).
#[map(name = "EGRET_SANDBOX_CLOSES_READ")]
static CLOSES_READ: LruHashMap<u64, u32> = LruHashMap::pinned(limits::MAX_SANDBOXES * 2, 0);

/// The sandbox's share entry, made on first use.
#[inline(always)]
fn share_of(cgroup_id: u64) -> Option<*mut SandboxShare> {
    let share = SANDBOX_SOCKETS.get_ptr_mut(&cgroup_id);
    if share.is_some() {
        return share;
    }
    let _ = SANDBOX_SOCKETS.insert(&cgroup_id, &SandboxShare::default(), BPF_NOEXIST);
    SANDBOX_SOCKETS.get_ptr_mut(&cgroup_id)
}

/// Takes one socket from the sandbox's quota; false when it has none left
/// (counted as refused, for the sandbox and node-wide).
#[inline(always)]
fn take_socket(cgroup_id: u64, max: u32) -> bool {
    let Some(share) = share_of(cgroup_id) else {
        // No room to account for it: the map is sized for twice the
        // sandboxes, so this is a node-level fault, not this sandbox's.
        return true;
    };
    unsafe {
        // A count that went below zero (its entry was evicted and made
        // again while sockets were open) reads as huge: it never refuses.
        let n = core::ptr::read_volatile(core::ptr::addr_of!((*share).sockets));
        if (n as i32) >= 0 && n >= max {
            atomic_add(core::ptr::addr_of_mut!((*share).refused), 1);
            return false;
        }
        atomic_add(core::ptr::addr_of_mut!((*share).sockets), 1);
    }
    true
}

/// Gives a counted socket back to its sandbox's quota.
#[inline(always)]
fn give_socket(tag: &SockTag) {
    if tag.flags & TAG_COUNTED == 0 {
        return;
    }
    if let Some(share) = SANDBOX_SOCKETS.get_ptr_mut(&tag.cgroup_id) {
        unsafe { atomic_add(core::ptr::addr_of_mut!((*share).sockets), u32::MAX) };
    }
}

/// UDP destination ports (host order) refused to sandboxes.
#[map(name = "EGRET_UDP_PORTS")]
static UDP_PORTS: HashMap<u16, u8> = HashMap::pinned(limits::MAX_CAPTURE_PORTS, 0);

#[map(name = "EGRET_CONFIG")]
static CONFIG: Array<KConfig> = Array::pinned(1, 0);

#[map(name = "EGRET_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);

#[map(name = "EGRET_CLOSES")]
static CLOSES: RingBuf = RingBuf::pinned(limits::RINGBUF_BYTES, 0);

/// Context fields must be accessed one u32 at a time: the verifier rejects
/// the u64 loads/stores LLVM would merge an array copy into.
#[inline(always)]
unsafe fn read_ip6(p: *const [u32; 4]) -> [u32; 4] {
    let w = p.cast::<u32>();
    unsafe {
        [
            core::ptr::read_volatile(w),
            core::ptr::read_volatile(w.add(1)),
            core::ptr::read_volatile(w.add(2)),
            core::ptr::read_volatile(w.add(3)),
        ]
    }
}

#[inline(always)]
unsafe fn write_ip6(p: *mut [u32; 4], v: &[u32; 4]) {
    let w = p.cast::<u32>();
    unsafe {
        core::ptr::write_volatile(w, v[0]);
        core::ptr::write_volatile(w.add(1), v[1]);
        core::ptr::write_volatile(w.add(2), v[2]);
        core::ptr::write_volatile(w.add(3), v[3]);
    }
}

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const QUIC_PORT: u16 = 443;
const BPF_NOEXIST: u64 = 1;

// sock_ops operations and TCP states (include/uapi/linux/bpf.h, net/tcp_states.h).
const OP_TCP_CONNECT_CB: u32 = 3;
const OP_ACTIVE_ESTABLISHED_CB: u32 = 4;
const OP_STATE_CB: u32 = 10;
const CB_FLAG_STATE: u32 = 1 << 2;
const TCP_CLOSE: u32 = 7;
// Socket families and types (include/linux/socket.h, net.h).
const AF_PACKET: u32 = 17;
const SOCK_RAW: u32 = 3;

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn config() -> KConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => KConfig::default(),
    }
}

/// The sandbox cgroup of the current task: its ancestor one level below the
/// sandbox root, so processes in nested cgroups still belong to their sandbox.
#[inline(always)]
fn sandbox_cgroup(cfg: &KConfig) -> u64 {
    unsafe { bpf_get_current_ancestor_cgroup_id((cfg.root_level + 1) as i32) }
}

/// Common connect path. `addr` is the destination in network order words.
#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: u16, redirect: fn(*mut bpf_sock_addr, u16)) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    let (ty, port_be) = unsafe { ((*sa).type_, (*sa).user_port) };
    let port = u16::from_be(port_be as u16);
    if ty == SOCK_DGRAM {
        return udp_verdict(&cfg, port);
    }
    if ty != SOCK_STREAM {
        return ALLOW;
    }
    let cgroup_id = sandbox_cgroup(&cfg);
    let mut tag = SockTag {
        cgroup_id,
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        start_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid: unsafe { bpf_get_current_pid_tgid() },
        orig_port: port,
        family,
        proto: PROTO_TCP,
        ..SockTag::default()
    };
    unsafe {
        if family == AF_INET {
            tag.orig_addr[0] = (*sa).user_ip4;
        } else {
            tag.orig_addr = read_ip6(core::ptr::addr_of!((*sa).user_ip6));
        }
    }
    // The agent's own endpoints (admin: metrics and status of every sandbox
    // on the node; the PROXY-protocol listener: forged attribution) are not
    // for sandboxes, by any address form.
    if cfg.guards_port(port) {
        let node_addr = unsafe { NODE_ADDRS.get(&normalize(family, &tag.orig_addr)) }.is_some();
        if cfg.agent_endpoint_refused(port, family, &tag.orig_addr, tag.netns_cookie, node_addr) {
            bump(stat::ADMIN_REFUSED);
            return REFUSE;
        }
    }
    match unsafe { ATTR.get(&cgroup_id) } {
        Some(a) => {
            tag.attr = *a;
            tag.flags |= TAG_ATTRIBUTED;
        }
        None => bump(stat::UNATTRIBUTED_CONNECTS),
    }
    if cfg.listen_port != 0 && unsafe { PORTS.get(&port) }.is_some() {
        redirect(sa, cfg.listen_port);
        tag.flags |= TAG_REDIRECTED;
        bump(stat::REDIRECTS);
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The sandbox's share of the socket maps: a socket connecting again
    // (after a failed attempt) is already counted.
    if cfg.max_sockets_per_sandbox != 0 {
        let counted = unsafe { TAGS.get(&cookie) }.is_some_and(|t| t.flags & TAG_COUNTED != 0);
        if counted {
            tag.flags |= TAG_COUNTED;
        } else if take_socket(cgroup_id, cfg.max_sockets_per_sandbox) {
            tag.flags |= TAG_COUNTED;
        } else {
            bump(stat::SOCKET_QUOTA_REFUSED);
            return REFUSE;
        }
    }
    if TAGS.insert(&cookie, &tag, 0).is_err() {
        give_socket(&tag);
        bump(stat::TAG_INSERT_FAILED);
    }
    ALLOW
}

fn redirect4(sa: *mut bpf_sock_addr, port: u16) {
    unsafe {
        (*sa).user_ip4 = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        (*sa).user_port = u32::from(port.to_be());
    }
}

fn redirect6(sa: *mut bpf_sock_addr, port: u16) {
    unsafe {
        let p = core::ptr::addr_of_mut!((*sa).user_ip6);
        let cur = read_ip6(p);
        if cur[0] == 0 && cur[1] == 0 && cur[2] == 0xffff_u32.to_be() {
            // IPv4-mapped destination: the IPv4 loopback listener.
            write_ip6(p, &[0, 0, 0xffff_u32.to_be(), u32::from_be_bytes([127, 0, 0, 1]).to_be()]);
        } else {
            write_ip6(p, &[0, 0, 0, 1u32.to_be()]);
        }
        (*sa).user_port = u32::from(port.to_be());
    }
}

#[cgroup_sock_addr(connect4)]
pub fn egret_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, AF_INET, redirect4)
}

#[cgroup_sock_addr(connect6)]
pub fn egret_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, AF_INET6, redirect6)
}

/// UDP from a sandbox: refused per `KConfig::udp_refused` (QUIC on 443
/// counted apart).
#[inline(always)]
fn udp_verdict(cfg: &KConfig, port: u16) -> i32 {
    let listed = unsafe { UDP_PORTS.get(&port) }.is_some();
    if cfg.udp_refused(port, listed) {
        bump(if port == QUIC_PORT {
            stat::QUIC_REFUSED
        } else {
            stat::UDP_REFUSED
        });
        return REFUSE;
    }
    ALLOW
}

#[inline(always)]
fn on_sendmsg(ctx: &SockAddrContext) -> i32 {
    let cfg = config();
    let port = u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16);
    udp_verdict(&cfg, port)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egret_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egret_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx)
}

#[inline(always)]
fn on_getpeername(ctx: &SockAddrContext, v4: bool) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(tag) = unsafe { TAGS.get(&cookie) } {
        if tag.flags & TAG_REDIRECTED != 0 {
            let sa = ctx.sock_addr;
            unsafe {
                if v4 {
                    (*sa).user_ip4 = tag.orig_addr[0];
                } else {
                    write_ip6(core::ptr::addr_of_mut!((*sa).user_ip6), &tag.orig_addr);
                }
                (*sa).user_port = u32::from(tag.orig_port.to_be());
            }
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn egret_getpeername4(ctx: SockAddrContext) -> i32 {
    on_getpeername(&ctx, true)
}

#[cgroup_sock_addr(getpeername6)]
pub fn egret_getpeername6(ctx: SockAddrContext) -> i32 {
    on_getpeername(&ctx, false)
}

#[inline(always)]
fn link_key(ops: *mut bpf_sock_ops, netns_cookie: u64) -> LinkKey {
    unsafe {
        let family = (*ops).family;
        let mut key = LinkKey {
            netns_cookie,
            addr: [0; 4],
            port: (*ops).local_port,
            family,
        };
        if family == AF_INET as u32 {
            key.addr[0] = (*ops).local_ip4;
        } else {
            key.addr = read_ip6(core::ptr::addr_of!((*ops).local_ip6));
        }
        key
    }
}

#[sock_ops]
pub fn egret_sockops(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    let op = ctx.op();
    if op != OP_TCP_CONNECT_CB && op != OP_ACTIVE_ESTABLISHED_CB && op != OP_STATE_CB {
        return 1;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(tag) = (unsafe { TAGS.get(&cookie) }).copied() else {
        if op == OP_STATE_CB && ctx.arg(1) == TCP_CLOSE {
            bump(stat::CLOSE_WITHOUT_TAG);
        }
        return 1;
    };
    if op == OP_TCP_CONNECT_CB {
        // Ask for state callbacks so failed connects report their end too;
        // added to the flags other programs may have set, never replacing.
        let flags = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ops).bpf_sock_ops_cb_flags)) };
        unsafe { bpf_sock_ops_cb_flags_set(ops, (flags | CB_FLAG_STATE) as i32) };
        return 1;
    }
    if op == OP_ACTIVE_ESTABLISHED_CB {
        if tag.flags & TAG_REDIRECTED != 0 {
            let key = link_key(ops, tag.netns_cookie);
            if LINKS.insert(&key, &cookie, 0).is_err() {
                bump(stat::LINK_INSERT_FAILED);
            }
        }
        return 1;
    }
    // OP_STATE_CB: arg(0) old state, arg(1) new state.
    if ctx.arg(1) != TCP_CLOSE {
        return 1;
    }
    let ev = unsafe {
        CloseEvent {
            cookie,
            end_ns: bpf_ktime_get_ns(),
            bytes_acked: (*ops).bytes_acked,
            bytes_received: (*ops).bytes_received,
            segs_in: (*ops).segs_in,
            segs_out: (*ops).segs_out,
            old_state: ctx.arg(0),
            rcv_nxt: (*ops).rcv_nxt,
            tag,
        }
    };
    // The sandbox's share of the ring buffer: its unread events.
    let cfg = config();
    let share = share_of(tag.cgroup_id);
    let queue = match share {
        Some(sh) if cfg.max_pending_closes_per_sandbox != 0 => {
            let read = unsafe { CLOSES_READ.get(&tag.cgroup_id) }.copied().unwrap_or(0);
            let ok = unsafe { &*sh }.may_queue_close(read, cfg.max_pending_closes_per_sandbox);
            if !ok {
                unsafe { atomic_add(core::ptr::addr_of_mut!((*sh).closes_dropped), 1) };
                bump(stat::CLOSES_OVER_SHARE);
            }
            ok
        }
        _ => true,
    };
    if queue {
        if CLOSES.output::<CloseEvent>(&ev, 0).is_err() {
            bump(stat::RINGBUF_DROPS);
            warn!(&ctx, "close event for socket {} dropped: ring buffer full", cookie);
        } else if let Some(sh) = share {
            unsafe { atomic_add(core::ptr::addr_of_mut!((*sh).closes_out), 1) };
        }
    }
    if tag.flags & TAG_REDIRECTED != 0 {
        let key = link_key(ops, tag.netns_cookie);
        let _ = LINKS.remove(&key);
    }
    if TAGS.remove(&cookie).is_ok() {
        give_socket(&tag);
    }
    1
}

/// What one skb carries, from its own headers.
struct Segment {
    payload: u64,
    segs: u64,
    /// Sequence number just past the FIN, if the segment carries one.
    fin_end_seq: Option<u32>,
}

/// TCP payload length, segment count and FIN of an skb, from its own headers.
#[inline(always)]
fn tcp_payload(ctx: &SkBuffContext) -> Option<Segment> {
    let first: u8 = ctx.load(0).ok()?;
    let (l3_len, proto) = match first >> 4 {
        4 => (((first & 0x0f) as usize) * 4, ctx.load::<u8>(9).ok()?),
        6 => (40usize, ctx.load::<u8>(6).ok()?),
        _ => return None,
    };
    if proto != PROTO_TCP {
        return None;
    }
    let doff: u8 = ctx.load(l3_len + 12).ok()?;
    let flags: u8 = ctx.load(l3_len + 13).ok()?;
    let hdrs = l3_len as u64 + ((doff >> 4) as u64) * 4;
    let len = ctx.len() as u64;
    let payload = len.saturating_sub(hdrs);
    let segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    let fin_end_seq = if flags & 0x01 != 0 {
        let seq = u32::from_be(ctx.load::<u32>(l3_len + 4).ok()?);
        Some(seq.wrapping_add(payload as u32).wrapping_add(1))
    } else {
        None
    };
    Some(Segment {
        payload,
        segs: if segs == 0 { 1 } else { segs },
        fin_end_seq,
    })
}

#[inline(always)]
fn count(ctx: &SkBuffContext, egress: bool) -> i32 {
    let Some(seg) = tcp_payload(ctx) else {
        return 1;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if cookie == 0 {
        return 1;
    }
    let fin = if egress { None } else { seg.fin_end_seq };
    let (bytes, segs) = (seg.payload, seg.segs);
    if add(cookie, egress, bytes, segs, fin) {
        return 1;
    }
    // First packet of this socket on any CPU. Only tagged sockets get an
    // entry (the close path hands it to the agent, which removes it), so
    // no socket leaves one behind. BPF_NOEXIST so a racing insert from
    // another CPU is never overwritten; then add to whichever won.
    if unsafe { TAGS.get(&cookie) }.is_none() {
        return 1;
    }
    let _ = COUNTERS.insert(&cookie, &SkbCounters::default(), BPF_NOEXIST);
    if !add(cookie, egress, bytes, segs, fin) {
        bump(stat::COUNTER_INSERT_FAILED);
    }
    1
}

#[inline(always)]
fn add(cookie: u64, egress: bool, bytes: u64, segs: u64, fin: Option<u32>) -> bool {
    let Some(c) = COUNTERS.get_ptr_mut(&cookie) else {
        return false;
    };
    unsafe {
        if egress {
            (*c).tx_bytes += bytes;
            (*c).tx_segs += segs;
        } else {
            (*c).rx_bytes += bytes;
            (*c).rx_segs += segs;
            if let Some(end) = fin {
                (*c).rx_fin += 1;
                (*c).rx_fin_end_seq = u64::from(end);
            }
        }
    }
    true
}

#[cgroup_skb(egress)]
pub fn egret_skb_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, true)
}

#[cgroup_skb(ingress)]
pub fn egret_skb_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, false)
}

/// RTT callbacks seen by [`egret_probe_rtt`].
#[map(name = "EGRET_PROBE_RTT")]
static PROBE_RTT: Array<u64> = Array::with_max_entries(1, 0);

const OP_RTT_CB: u32 = 12;
const CB_FLAG_RTT: u32 = 1 << 3;

/// Not attached by the agent: a stand-in for another tool's `sock_ops`
/// program (the privileged tests attach it below egret's), which asks for
/// RTT callbacks and counts them — so a test sees whether egret's program
/// adds its own flags without clearing another program's.
#[sock_ops]
pub fn egret_probe_rtt(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    let op = ctx.op();
    if op == OP_TCP_CONNECT_CB {
        let flags =
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ops).bpf_sock_ops_cb_flags)) };
        unsafe { bpf_sock_ops_cb_flags_set(ops, (flags | CB_FLAG_RTT) as i32) };
    } else if op == OP_RTT_CB {
        if let Some(p) = PROBE_RTT.get_ptr_mut(0) {
            unsafe { atomic_xadd64(p, 1) };
        }
    }
    1
}

#[inline(always)]
unsafe fn atomic_xadd64(p: *mut u64, v: u64) {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
}

/// Raw and packet sockets see and send traffic past the connect hooks (no
/// tag, no redirect): refused in sandboxes unless `block_raw` is off.
#[cgroup_sock(sock_create)]
pub fn egret_sock_create(ctx: SockContext) -> i32 {
    let cfg = config();
    if cfg.block_raw == 0 {
        return ALLOW;
    }
    let sk: *mut bpf_sock = ctx.sock;
    let (family, ty) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*sk).family)),
            core::ptr::read_volatile(core::ptr::addr_of!((*sk).type_)),
        )
    };
    if family == AF_PACKET || ty == SOCK_RAW {
        bump(stat::RAW_SOCKET_REFUSED);
        return REFUSE;
    }
    ALLOW
}

/// A socket whose tag is still present when its file is released never
/// had a state callback coming (its connect failed before the handshake:
/// unreachable, refused by routing): nothing else would remove the tag.
/// Sockets that reached `TCP_CLOSE` through the state callback were removed
/// there; live ones are left for their callback.
#[cgroup_sock(sock_release)]
pub fn egret_sock_release(ctx: SockContext) -> i32 {
    let sk: *mut bpf_sock = ctx.sock;
    let (proto, state) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*sk).protocol)),
            core::ptr::read_volatile(core::ptr::addr_of!((*sk).state)),
        )
    };
    if proto != PROTO_TCP as u32 || state != TCP_CLOSE {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(tag) = unsafe { TAGS.get(&cookie) }.copied() {
        if TAGS.remove(&cookie).is_ok() {
            give_socket(&tag);
            let _ = COUNTERS.remove(&cookie);
            bump(stat::TAGS_RELEASED);
        }
    }
    ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
