//! Loads the kernel half, attaches it at the sandbox root and owns its maps.
//!
//! Maps and links are pinned under `node.bpffsDir`, so a restarted agent
//! finds the programs still attached and the counters still counting: it
//! re-opens the pinned maps and does not attach a second time (which would
//! count every byte twice). A different program build (by content hash)
//! replaces the pinned set.
//!
//! Attachment uses BPF links (`bpf_link_create`), which the kernel always
//! treats as multi-attach: egret's programs coexist with whatever else is
//! attached at the same cgroup (flags must be 0 for link-based attach, so
//! `CgroupAttachMode::Single` is what requests that).
use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps,
    },
    Ebpf, EbpfLoader,
};
use egret_common::{
    stat, AttrRef, Guarded, KConfig, LinkKey, NodeAddr, SandboxShare, SkbCounters, SockTag,
};

/// The compiled kernel half (built by `agent/build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egret.bpf.o"));

/// The compiled object, for the privileged tests (which load its probe
/// programs on their own).
pub fn object() -> &'static [u8] {
    OBJECT
}

pub mod probe;

/// How a program attaches at the sandbox root cgroup.
#[derive(Clone, Copy)]
enum Attach {
    SockAddr,
    Skb(CgroupSkbAttachType),
    SockOps,
    /// `cgroup/sock_create`, `cgroup/sock_release` (type from the section).
    Sock,
}

/// Every program in the object and how it attaches.
const PROGRAMS: [(&str, Attach); 11] = [
    ("egret_connect4", Attach::SockAddr),
    ("egret_connect6", Attach::SockAddr),
    ("egret_sendmsg4", Attach::SockAddr),
    ("egret_sendmsg6", Attach::SockAddr),
    ("egret_getpeername4", Attach::SockAddr),
    ("egret_getpeername6", Attach::SockAddr),
    ("egret_skb_egress", Attach::Skb(CgroupSkbAttachType::Egress)),
    (
        "egret_skb_ingress",
        Attach::Skb(CgroupSkbAttachType::Ingress),
    ),
    ("egret_sockops", Attach::SockOps),
    ("egret_sock_create", Attach::Sock),
    ("egret_sock_release", Attach::Sock),
];

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("mounting bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("creating {path} in bpffs: {source}")]
    Bpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listing the node's addresses: {0}")]
    NodeAddrs(#[source] std::io::Error),
    #[error("reading the agent's netns cookie (SO_NETNS_COOKIE): {0}")]
    AgentNetns(#[source] std::io::Error),
    #[error("loading eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("{0} agent endpoints to guard; the kernel config holds at most 4")]
    TooManyGuarded(usize),
    #[error("program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("opening the pinned link {path}: {source}")]
    PinnedLink {
        path: PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error("program {name}: its link is not an fd link: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How the programs came to be attached in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// Attached now (first start, or a different program build).
    Fresh,
    /// Found pinned and attached from an earlier run; reused as is.
    Reused,
}

/// Handles on the pinned maps the agent uses.
pub struct KernelMaps {
    config: Mutex<Array<MapData, KConfig>>,
    ports: Mutex<HashMap<MapData, u16, u8>>,
    udp_ports: Mutex<HashMap<MapData, u16, u8>>,
    sandbox_sockets: HashMap<MapData, u64, SandboxShare>,
    closes_read: Mutex<HashMap<MapData, u64, u32>>,
    attr: Mutex<HashMap<MapData, u64, AttrRef>>,
    tags: HashMap<MapData, u64, SockTag>,
    links: HashMap<MapData, LinkKey, u64>,
    counters: Mutex<PerCpuHashMap<MapData, u64, SkbCounters>>,
    node_addrs: Mutex<HashMap<MapData, NodeAddr, u8>>,
    stats: PerCpuArray<MapData, u64>,
}

fn sum_counters(values: &aya::maps::PerCpuValues<SkbCounters>) -> SkbCounters {
    let mut sum = SkbCounters::default();
    for v in values.iter() {
        sum.add(v);
    }
    sum
}

pub struct Kernel {
    pub maps: KernelMaps,
    /// Taken by the close loop, which owns it from then on.
    pub closes: Mutex<Option<RingBuf<MapData>>>,
    /// Network namespace cookie of the agent itself.
    pub agent_netns: u64,
    pub attachment: Attachment,
    /// Kept so aya-log can be polled; `None` when nothing logs.
    pub logger: Mutex<Option<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    _ebpf: Ebpf,
}

/// Settings the loader needs from the node config.
pub struct LoadOptions<'a> {
    pub bpffs_dir: &'a Path,
    pub sandbox_root: &'a Path,
    pub root_level: u32,
    pub listen_port: u16,
    pub capture_ports: &'a [u16],
    /// UDP ports refused to sandboxes (443 when `blockQuic`).
    pub udp_ports: &'a [u16],
    /// Refuse every UDP port but DNS.
    pub udp_all_but_dns: bool,
    pub block_raw: bool,
    /// Tagged sockets one sandbox may hold (0 = no quota).
    pub max_sockets_per_sandbox: u32,
    /// Unread close events one sandbox may have on the ring buffer.
    pub max_pending_closes_per_sandbox: u32,
    /// The agent's TCP endpoints refused to sandboxes (admin listener,
    /// PROXY-protocol listener).
    pub guarded: &'a [SocketAddr],
}

/// Identifies the program build and attach point. Kept as the name of an
/// empty directory in bpffs (which holds no regular files).
fn object_version(root: &Path) -> String {
    let mut h = crc32fast::Hasher::new();
    h.update(OBJECT);
    h.update(root.as_os_str().as_encoded_bytes());
    format!("version-{:08x}-{}", h.finalize(), OBJECT.len())
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there yet.
fn ensure_bpffs(dir: &Path) -> Result<(), BpfError> {
    let base = Path::new("/sys/fs/bpf");
    if dir.starts_with(base) && !is_bpffs(base) {
        nix::mount::mount(
            Some("bpf"),
            base,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| BpfError::Mount {
            path: base.to_owned(),
            source,
        })?;
    }
    create_dir(dir)
}

fn create_dir(dir: &Path) -> Result<(), BpfError> {
    fs::create_dir_all(dir).map_err(|source| BpfError::Bpffs {
        path: dir.to_owned(),
        source,
    })
}

pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

impl Kernel {
    /// Loads (or re-opens) the programs and attaches them to `sandbox_root`.
    pub fn load(opts: &LoadOptions<'_>) -> Result<Kernel, BpfError> {
        ensure_bpffs(opts.bpffs_dir)?;
        // Before anything is attached: a kernel that cannot say it
        // (SO_NETNS_COOKIE, Linux 5.14) must not be left with programs
        // redirecting sandboxes to an agent that then exits.
        let agent_netns = crate::netns::own_netns_cookie().map_err(BpfError::AgentNetns)?;
        let version = object_version(opts.sandbox_root);
        let version_dir = opts.bpffs_dir.join(&version);
        let links_dir = opts.bpffs_dir.join("links");
        let maps_dir = opts.bpffs_dir.join("maps");
        if !version_dir.exists() {
            // A different build (or nothing): drop the old pins. Removing a
            // link pin detaches it once no process holds it.
            clear_pins(opts.bpffs_dir);
        }
        for d in [&links_dir, &maps_dir] {
            create_dir(d)?;
        }

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!("aya-log not initialised: {e}");
                None
            }
        };

        let cgroup = fs::File::open(opts.sandbox_root).map_err(|source| BpfError::Cgroup {
            path: opts.sandbox_root.to_owned(),
            source,
        })?;
        let all_pinned = all_program_names().all(|n| links_dir.join(n).exists());
        let attachment = if all_pinned {
            // Verify the pins still open as links.
            for n in all_program_names() {
                PinnedLink::from_pin(links_dir.join(n)).map_err(|source| BpfError::PinnedLink {
                    path: links_dir.join(n),
                    source,
                })?;
            }
            Attachment::Reused
        } else {
            let _ = fs::remove_dir_all(&links_dir);
            create_dir(&links_dir)?;
            attach_all(&mut ebpf, cgroup.as_fd(), &links_dir)?;
            create_dir(&version_dir)?;
            Attachment::Fresh
        };

        let kernel = Kernel {
            maps: KernelMaps {
                config: Mutex::new(take(&mut ebpf, "EGRET_CONFIG")?),
                ports: Mutex::new(take(&mut ebpf, "EGRET_PORTS")?),
                udp_ports: Mutex::new(take(&mut ebpf, "EGRET_UDP_PORTS")?),
                sandbox_sockets: take(&mut ebpf, "EGRET_SANDBOX_SOCKETS")?,
                closes_read: Mutex::new(take(&mut ebpf, "EGRET_SANDBOX_CLOSES_READ")?),
                attr: Mutex::new(take(&mut ebpf, "EGRET_ATTR")?),
                tags: take(&mut ebpf, "EGRET_TAGS")?,
                links: take(&mut ebpf, "EGRET_LINKS")?,
                counters: Mutex::new(take(&mut ebpf, "EGRET_COUNTERS")?),
                node_addrs: Mutex::new(take(&mut ebpf, "EGRET_NODE_ADDRS")?),
                stats: take(&mut ebpf, "EGRET_STATS")?,
            },
            closes: Mutex::new(Some(take(&mut ebpf, "EGRET_CLOSES")?)),
            agent_netns,
            attachment,
            logger: Mutex::new(logger),
            _ebpf: ebpf,
        };
        kernel.maps.configure(&KernelSettings {
            listen_port: opts.listen_port,
            udp_ports: opts.udp_ports.to_vec(),
            udp_all_but_dns: opts.udp_all_but_dns,
            block_raw: opts.block_raw,
            max_sockets_per_sandbox: opts.max_sockets_per_sandbox,
            max_pending_closes_per_sandbox: opts.max_pending_closes_per_sandbox,
            root_level: opts.root_level,
            capture_ports: opts.capture_ports.to_vec(),
            guarded: opts.guarded.to_vec(),
            agent_netns: kernel.agent_netns,
        })?;
        Ok(kernel)
    }
}

/// What the programs read from userspace; can change while they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSettings {
    pub listen_port: u16,
    pub udp_ports: Vec<u16>,
    pub udp_all_but_dns: bool,
    pub block_raw: bool,
    pub max_sockets_per_sandbox: u32,
    pub max_pending_closes_per_sandbox: u32,
    pub root_level: u32,
    pub capture_ports: Vec<u16>,
    /// The agent's TCP endpoints sandboxes may not connect to.
    pub guarded: Vec<SocketAddr>,
    /// [`Kernel::agent_netns`].
    pub agent_netns: u64,
}

/// Network-order words of an address as the programs see it (v4 in `[0]`).
fn words(ip: IpAddr) -> (u16, [u32; 4]) {
    match ip {
        IpAddr::V4(v4) => (
            egret_common::AF_INET,
            [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        ),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => words(IpAddr::V4(v4)),
            None => {
                let o = v6.octets();
                let mut w = [0u32; 4];
                for (i, c) in o.chunks_exact(4).enumerate() {
                    w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                }
                (egret_common::AF_INET6, w)
            }
        },
    }
}

/// One guarded endpoint as [`KConfig::guarded`] holds it.
fn guarded(ep: SocketAddr) -> Guarded {
    let mut g = Guarded {
        port: ep.port(),
        ..Guarded::default()
    };
    if !ep.ip().is_unspecified() {
        (g.family, g.addr) = words(ep.ip());
    }
    g
}

/// A node address as the `EGRET_NODE_ADDRS` map keys it.
pub fn node_addr(ip: IpAddr) -> NodeAddr {
    let (family, addr) = words(ip);
    egret_common::normalize(family, &addr)
}

/// The kernel config for `k`: guarded endpoints beyond
/// [`egret_common::MAX_GUARDED`] are an error, not silently unguarded.
fn kconfig(k: &KernelSettings) -> Result<KConfig, BpfError> {
    if k.guarded.len() > egret_common::MAX_GUARDED {
        return Err(BpfError::TooManyGuarded(k.guarded.len()));
    }
    let mut cfg = KConfig {
        listen_port: k.listen_port,
        udp_all_but_dns: u8::from(k.udp_all_but_dns),
        block_raw: u8::from(k.block_raw),
        max_sockets_per_sandbox: k.max_sockets_per_sandbox,
        max_pending_closes_per_sandbox: k.max_pending_closes_per_sandbox,
        root_level: k.root_level,
        agent_netns: k.agent_netns,
        ..KConfig::default()
    };
    for (slot, ep) in cfg.guarded.iter_mut().zip(&k.guarded) {
        *slot = guarded(*ep);
    }
    Ok(cfg)
}

impl KernelMaps {
    /// Writes node settings and capture ports into the kernel maps; takes
    /// effect for the next `connect()`.
    pub fn configure(&self, k: &KernelSettings) -> Result<(), BpfError> {
        let cfg = kconfig(k)?;
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(0, cfg, 0)
            .map_err(|source| BpfError::Map {
                name: "EGRET_CONFIG",
                source,
            })?;
        sync_port_set(&self.ports, &k.capture_ports, "EGRET_PORTS")?;
        sync_port_set(&self.udp_ports, &k.udp_ports, "EGRET_UDP_PORTS")
    }
}

/// Removes every pin under `dir` (links detach, maps are freed once unused).
pub fn clear_pins(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            clear_pins(&p);
            let _ = fs::remove_dir(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
    }
}

fn all_program_names() -> impl Iterator<Item = &'static str> {
    PROGRAMS.iter().map(|(n, _)| *n)
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(BpfError::MissingMap(name))?;
    T::try_from(map).map_err(|source| BpfError::Map { name, source })
}

fn pin(link: FdLink, dir: &Path, name: &'static str) -> Result<(), BpfError> {
    let path = dir.join(name);
    link.pin(&path)
        .map_err(|source| BpfError::Pin { path, source })?;
    Ok(())
}

fn attach_all(
    ebpf: &mut Ebpf,
    cgroup: std::os::fd::BorrowedFd<'_>,
    links_dir: &Path,
) -> Result<(), BpfError> {
    for (name, how) in PROGRAMS {
        if let Err(e) = attach_one(ebpf, name, how, cgroup, links_dir) {
            // All or nothing: a kernel that refuses one program must not be
            // left redirecting sandboxes with the others while the agent
            // exits. Unpinning detaches the links already made (their
            // last holders are this load's descriptors, dropped on return).
            let _ = fs::remove_dir_all(links_dir);
            return Err(e);
        }
    }
    Ok(())
}

/// Load → attach (as a BPF link) → pin, for one program.
fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    how: Attach,
    cgroup: std::os::fd::BorrowedFd<'_>,
    links_dir: &Path,
) -> Result<(), BpfError> {
    let perr = |source| BpfError::Program { name, source };
    let lerr = |source| BpfError::Link { name, source };
    let prog = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?;
    let single = CgroupAttachMode::Single;
    let link: FdLink = match how {
        Attach::SockAddr => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(perr)?;
            p.load().map_err(perr)?;
            let id = p.attach(cgroup, single).map_err(perr)?;
            p.take_link(id).map_err(perr)?.try_into().map_err(lerr)?
        }
        Attach::Skb(kind) => {
            let p: &mut CgroupSkb = prog.try_into().map_err(perr)?;
            p.load().map_err(perr)?;
            let id = p.attach(cgroup, kind, single).map_err(perr)?;
            p.take_link(id).map_err(perr)?.try_into().map_err(lerr)?
        }
        Attach::SockOps => {
            let p: &mut SockOps = prog.try_into().map_err(perr)?;
            p.load().map_err(perr)?;
            let id = p.attach(cgroup, single).map_err(perr)?;
            p.take_link(id).map_err(perr)?.try_into().map_err(lerr)?
        }
        Attach::Sock => {
            let p: &mut CgroupSock = prog.try_into().map_err(perr)?;
            p.load().map_err(perr)?;
            let id = p.attach(cgroup, single).map_err(perr)?;
            p.take_link(id).map_err(perr)?.try_into().map_err(lerr)?
        }
    };
    pin(link, links_dir, name)
}

impl KernelMaps {
    /// Points a sandbox cgroup at an attribution.
    pub fn set_attribution(&self, cgroup_id: u64, attr: AttrRef) -> Result<(), BpfError> {
        let mut m = self.attr.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(cgroup_id, attr, 0)
            .map_err(|source| BpfError::Map {
                name: "EGRET_ATTR",
                source,
            })
    }

    pub fn clear_attribution(&self, cgroup_id: u64) {
        let mut m = self.attr.lock().unwrap_or_else(|p| p.into_inner());
        let _ = m.remove(&cgroup_id);
    }

    pub fn attribution_of(&self, cgroup_id: u64) -> Option<AttrRef> {
        let m = self.attr.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&cgroup_id, 0).ok()
    }

    /// Every (slot, generation) the kernel holds: the sandbox cgroups'
    /// current pairs and those of attributed sockets still tagged. Read-only.
    pub fn held_attributions(&self) -> Result<Vec<AttrRef>, BpfError> {
        let mut out = Vec::new();
        {
            let m = self.attr.lock().unwrap_or_else(|p| p.into_inner());
            for kv in m.iter() {
                let (_, attr) = kv.map_err(|source| BpfError::Map {
                    name: "EGRET_ATTR",
                    source,
                })?;
                out.push(attr);
            }
        }
        // A key deleted under the iteration restarts it (the kernel returns
        // the first key): bounded, so socket churn cannot keep it going.
        let bound = 4 * egret_common::limits::MAX_SOCKETS as usize;
        for kv in self.tags.iter().take(bound) {
            let (_, tag) = kv.map_err(|source| BpfError::Map {
                name: "EGRET_TAGS",
                source,
            })?;
            if tag.flags & egret_common::TAG_ATTRIBUTED != 0 {
                out.push(tag.attr);
            }
        }
        Ok(out)
    }

    /// The sandbox socket a connection accepted by the agent came from.
    pub fn link(&self, key: &LinkKey) -> Option<u64> {
        self.links.get(key, 0).ok()
    }

    pub fn tag(&self, cookie: u64) -> Option<SockTag> {
        self.tags.get(&cookie, 0).ok()
    }

    /// Sums and removes a closed socket's per-CPU payload counters. The
    /// close loop is their one reader: the proxy measures a transaction's
    /// bytes on its own end of the stream (see `proxy::http`), so nothing
    /// races the removal.
    pub fn take_counters(&self, cookie: u64) -> Option<SkbCounters> {
        let mut m = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let sum = sum_counters(&m.get(&cookie, 0).ok()?);
        let _ = m.remove(&cookie);
        Some(sum)
    }

    /// Replaces the node addresses the programs refuse guarded ports on
    /// (wildcard listeners are reachable through every one of them).
    pub fn set_node_addrs(&self, addrs: &[IpAddr]) -> Result<(), BpfError> {
        let want: std::collections::HashSet<NodeAddr> =
            addrs.iter().map(|ip| node_addr(*ip)).collect();
        let mut m = self.node_addrs.lock().unwrap_or_else(|p| p.into_inner());
        let have: Vec<NodeAddr> = m.keys().filter_map(Result::ok).collect();
        for k in &have {
            if !want.contains(k) {
                let _ = m.remove(k);
            }
        }
        for k in &want {
            if !have.contains(k) {
                m.insert(k, 1, 0).map_err(|source| BpfError::Map {
                    name: "EGRET_NODE_ADDRS",
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// [`Self::set_node_addrs`] with the agent netns's current addresses.
    pub fn refresh_node_addrs(&self) -> Result<(), BpfError> {
        let addrs = crate::netns::own_addresses().map_err(BpfError::NodeAddrs)?;
        self.set_node_addrs(&addrs)
    }

    /// Close events read per sandbox so far, as last told to the kernel
    /// (survives an agent restart with the pinned maps).
    pub fn closes_read(&self) -> std::collections::HashMap<u64, u32> {
        let m = self.closes_read.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().filter_map(Result::ok).collect()
    }

    /// Tells the kernel how many close events of each sandbox were read,
    /// so their share of the ring buffer is free again.
    pub fn set_closes_read(&self, read: &[(u64, u32)]) {
        let mut m = self.closes_read.lock().unwrap_or_else(|p| p.into_inner());
        for (cg, n) in read {
            let _ = m.insert(cg, n, 0);
        }
    }

    /// Sandboxes' shares of the socket maps (cgroup id, share): those
    /// holding sockets or refused some, most refused first, at most `n`.
    pub fn sandbox_shares(&self, n: usize) -> Vec<(u64, SandboxShare)> {
        let mut v: Vec<(u64, SandboxShare)> = self
            .sandbox_sockets
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, s)| s.refused > 0 || s.closes_dropped > 0 || (s.sockets as i32) > 0)
            .collect();
        v.sort_by(|a, b| {
            b.1.refused
                .cmp(&a.1.refused)
                .then(b.1.sockets.cmp(&a.1.sockets))
        });
        v.truncate(n);
        v
    }

    /// Entries in the socket maps (tags, links, counters): for tests and
    /// `/status`, to see occupancy return to its baseline.
    pub fn occupancy(&self) -> (usize, usize, usize) {
        let tags = self.tags.keys().count();
        let links = self.links.keys().count();
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .count();
        (tags, links, counters)
    }

    /// Kernel-side counters (drops, misses, redirects) summed over CPUs.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        (0..stat::COUNT)
            .map(|i| {
                let total = self
                    .stats
                    .get(&i, 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or(0);
                (stat::NAMES[i as usize], total)
            })
            .collect()
    }
}

impl crate::admin::Report for Kernel {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        let events: Vec<_> = self
            .maps
            .stats()
            .into_iter()
            .map(|(name, v)| (vec![("event", name.to_owned())], v))
            .collect();
        m.counter(
            "egret_kernel_events",
            "Kernel-side events: redirects, refusals, drops and misses (EGRET_STATS)",
            &events,
        )?;
        let (tags, links, counters) = self.maps.occupancy();
        m.gauge(
            "egret_kernel_map_entries",
            "Entries in the per-socket kernel maps (back to baseline when sockets are gone)",
            &[
                (vec![("map", "tags".into())], tags as i64),
                (vec![("map", "links".into())], links as i64),
                (vec![("map", "counters".into())], counters as i64),
            ],
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        use serde_json::json;
        s.insert("programs".into(), json!(format!("{:?}", self.attachment)));
        s.insert(
            "kernel".into(),
            json!(self
                .maps
                .stats()
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()),
        );
        // Per-sandbox shares of the socket maps (cgroup id → sockets held,
        // connects refused over the quota), most refused first.
        s.insert(
            "sandbox_sockets".into(),
            self.maps
                .sandbox_shares(100)
                .into_iter()
                .map(|(cg, sh)| {
                    json!({
                        "cgroup_id": cg.to_string(),
                        "sockets": sh.sockets,
                        "refused": sh.refused,
                        "closes_dropped": sh.closes_dropped,
                    })
                })
                .collect(),
        );
    }
}

/// Makes a port-set map hold exactly `wanted`: stale ports out, new ones in.
fn sync_port_set(
    map: &Mutex<HashMap<MapData, u16, u8>>,
    wanted: &[u16],
    name: &'static str,
) -> Result<(), BpfError> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    let stale: Vec<u16> = map.keys().filter_map(Result::ok).collect();
    for p in stale {
        if !wanted.contains(&p) {
            let _ = map.remove(&p);
        }
    }
    for p in wanted {
        map.insert(p, 1, 0)
            .map_err(|source| BpfError::Map { name, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use egret_common::{AF_INET, AF_INET6};

    fn v4(ip: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(ip), 0, 0, 0]
    }

    fn mapped(ip: [u8; 4]) -> [u32; 4] {
        [0, 0, 0xffff_u32.to_be(), u32::from_ne_bytes(ip)]
    }

    fn v6_words(ip: std::net::Ipv6Addr) -> [u32; 4] {
        let o = ip.octets();
        let mut w = [0u32; 4];
        for (i, c) in o.chunks_exact(4).enumerate() {
            w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        w
    }

    const AGENT: u64 = 7;
    const OTHER: u64 = 9;

    fn guard(eps: &[&str]) -> KConfig {
        kconfig(&KernelSettings {
            listen_port: 15001,
            udp_ports: vec![443],
            udp_all_but_dns: false,
            block_raw: true,
            max_sockets_per_sandbox: 0,
            max_pending_closes_per_sandbox: 0,
            root_level: 1,
            capture_ports: vec![443],
            guarded: eps.iter().map(|e| e.parse().unwrap()).collect(),
            agent_netns: AGENT,
        })
        .unwrap()
    }

    /// (destination, from the agent's netns?, a node address?, refused?)
    type Case = (&'static str, u64, bool, bool);

    fn check(c: &KConfig, port: u16, cases: &[Case]) {
        for &(dst, netns, node, want) in cases {
            let ip: IpAddr = dst.parse().unwrap();
            let w = match ip {
                IpAddr::V4(a) => v4(a.octets()),
                IpAddr::V6(a) => v6_words(a),
            };
            let family = if ip.is_ipv4() { AF_INET } else { AF_INET6 };
            assert_eq!(
                c.agent_endpoint_refused(port, family, &w, netns, node),
                want,
                "{dst} port {port} from netns {netns} (node address: {node})"
            );
            // Every v4 destination also as an AF_INET6 socket reaches it.
            if let IpAddr::V4(a) = ip {
                assert_eq!(
                    c.agent_endpoint_refused(port, AF_INET6, &mapped(a.octets()), netns, node),
                    want,
                    "::ffff:{dst} port {port} from netns {netns}"
                );
            }
        }
    }

    /// The one rule for every address form, as a table.
    #[test]
    fn sandboxes_cannot_reach_agent_endpoints_by_any_address_form() {
        let local_forms: &[Case] = &[
            ("127.0.0.1", AGENT, false, true),
            ("127.0.0.9", AGENT, false, true),
            ("127.255.255.254", AGENT, false, true),
            ("0.0.0.0", AGENT, false, true),
            ("::", AGENT, false, true),
            ("::1", AGENT, false, true),
            // Another netns's loopback is its own: no agent endpoint there.
            ("127.0.0.1", OTHER, false, false),
            ("0.0.0.0", OTHER, false, false),
            ("::", OTHER, false, false),
        ];
        // Loopback listener.
        let c = guard(&["127.0.0.1:9464"]);
        check(&c, 9464, local_forms);
        check(
            &c,
            9464,
            &[
                ("10.0.0.1", AGENT, false, false),
                ("10.0.0.1", OTHER, true, false),
            ],
        );
        check(
            &c,
            9465,
            &[
                ("127.0.0.1", AGENT, false, false),
                ("0.0.0.0", AGENT, false, false),
            ],
        );
        // IPv6 loopback listener: the same local forms.
        let c = guard(&["[::1]:9464"]);
        check(&c, 9464, local_forms);
        // A node address: that address from any netns, local forms from ours.
        let c = guard(&["10.1.2.3:9464"]);
        check(&c, 9464, local_forms);
        check(
            &c,
            9464,
            &[
                ("10.1.2.3", OTHER, true, true),
                ("10.1.2.3", AGENT, true, true),
                ("10.1.2.4", OTHER, false, false),
            ],
        );
        // Wildcard: any address from our netns, node addresses from any.
        for wild in ["0.0.0.0:9464", "[::]:9464"] {
            let c = guard(&[wild]);
            check(&c, 9464, local_forms);
            check(
                &c,
                9464,
                &[
                    ("192.168.1.1", AGENT, false, true),
                    ("10.200.0.1", OTHER, true, true),
                    ("192.168.1.1", OTHER, false, false),
                    ("fd00::1", OTHER, true, true),
                ],
            );
            check(&c, 80, &[("192.168.1.1", AGENT, false, false)]);
        }
        // Several endpoints: each guarded, the rest of the ports not.
        let c = guard(&["127.0.0.1:9464", "0.0.0.0:15008"]);
        check(&c, 9464, &[("0.0.0.0", AGENT, false, true)]);
        check(&c, 15008, &[("10.200.0.1", OTHER, true, true)]);
        check(&c, 15009, &[("10.200.0.1", OTHER, true, false)]);
        assert!(c.guards_port(9464) && c.guards_port(15008) && !c.guards_port(0));
    }

    #[test]
    fn udp_refusal_by_list_or_all_but_dns() {
        let listed = KConfig::default();
        assert!(listed.udp_refused(443, true));
        assert!(!listed.udp_refused(443, false));
        assert!(!listed.udp_refused(53, false));
        let all = KConfig {
            udp_all_but_dns: 1,
            ..KConfig::default()
        };
        assert!(all.udp_refused(443, false) && all.udp_refused(51820, false));
        assert!(!all.udp_refused(53, true), "DNS stays reachable");
    }

    #[test]
    fn more_guarded_endpoints_than_the_kernel_holds_is_an_error() {
        let r = kconfig(&KernelSettings {
            listen_port: 1,
            udp_ports: vec![],
            udp_all_but_dns: false,
            block_raw: false,
            max_sockets_per_sandbox: 0,
            max_pending_closes_per_sandbox: 0,
            root_level: 1,
            capture_ports: vec![],
            guarded: (1..=5)
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
            agent_netns: AGENT,
        });
        assert!(matches!(r, Err(BpfError::TooManyGuarded(5))));
    }
}
