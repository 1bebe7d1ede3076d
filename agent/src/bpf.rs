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
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps,
    },
    Ebpf, EbpfLoader,
};
use egret_common::{stat, AttrRef, KConfig, LinkKey, SkbCounters, SockTag};

/// The compiled kernel half (built by `agent/build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egret.bpf.o"));

/// Program names in the object and how each attaches.
const SOCK_ADDR_PROGS: [&str; 6] = [
    "egret_connect4",
    "egret_connect6",
    "egret_sendmsg4",
    "egret_sendmsg6",
    "egret_getpeername4",
    "egret_getpeername6",
];
const SKB_PROGS: [(&str, CgroupSkbAttachType); 2] = [
    ("egret_skb_egress", CgroupSkbAttachType::Egress),
    ("egret_skb_ingress", CgroupSkbAttachType::Ingress),
];
const SOCK_OPS_PROG: &str = "egret_sockops";

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("bpffs: {0}")]
    Bpffs(String),
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
    #[error("pinning {path}: {message}")]
    Pin { path: PathBuf, message: String },
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
    attr: Mutex<HashMap<MapData, u64, AttrRef>>,
    tags: HashMap<MapData, u64, SockTag>,
    links: HashMap<MapData, LinkKey, u64>,
    counters: Mutex<PerCpuHashMap<MapData, u64, SkbCounters>>,
    /// Final counters of the sockets closed most recently: the close loop
    /// removes a socket's entry as soon as its close event arrives, which
    /// can be before the proxy has read them for the connection's last
    /// transaction (the sandbox closes right after the response).
    closed: Mutex<RecentlyClosed>,
    stats: PerCpuArray<MapData, u64>,
}

/// Bounded cache of closed sockets' counters, oldest evicted first.
#[derive(Default)]
struct RecentlyClosed {
    by_cookie: std::collections::HashMap<u64, SkbCounters>,
    order: std::collections::VecDeque<u64>,
}

impl RecentlyClosed {
    /// Closes kept: a few seconds of closes at a busy node's rate.
    const CAP: usize = 16_384;

    fn insert(&mut self, cookie: u64, c: SkbCounters) {
        if self.by_cookie.insert(cookie, c).is_none() {
            self.order.push_back(cookie);
        }
        while self.order.len() > Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.by_cookie.remove(&old);
            }
        }
    }
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
    pub block_quic: bool,
    /// The admin listener, refused to sandboxes.
    pub admin_listen: SocketAddr,
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
        .map_err(|e| BpfError::Bpffs(format!("mounting bpffs at {}: {e}", base.display())))?;
    }
    fs::create_dir_all(dir).map_err(|e| BpfError::Bpffs(format!("creating {}: {e}", dir.display())))
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
            fs::create_dir_all(d)
                .map_err(|e| BpfError::Bpffs(format!("creating {}: {e}", d.display())))?;
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
        let all_pinned = all_program_names()
            .iter()
            .all(|n| links_dir.join(n).exists());
        let attachment = if all_pinned {
            // Verify the pins still open as links.
            for n in all_program_names() {
                PinnedLink::from_pin(links_dir.join(n)).map_err(|e| BpfError::Pin {
                    path: links_dir.join(n),
                    message: e.to_string(),
                })?;
            }
            Attachment::Reused
        } else {
            let _ = fs::remove_dir_all(&links_dir);
            fs::create_dir_all(&links_dir)
                .map_err(|e| BpfError::Bpffs(format!("creating {}: {e}", links_dir.display())))?;
            attach_all(&mut ebpf, cgroup.as_fd(), &links_dir)?;
            fs::create_dir_all(&version_dir)
                .map_err(|e| BpfError::Bpffs(format!("creating {}: {e}", version_dir.display())))?;
            Attachment::Fresh
        };

        let kernel = Kernel {
            maps: KernelMaps {
                config: Mutex::new(take(&mut ebpf, "EGRET_CONFIG")?),
                ports: Mutex::new(take(&mut ebpf, "EGRET_PORTS")?),
                attr: Mutex::new(take(&mut ebpf, "EGRET_ATTR")?),
                tags: take(&mut ebpf, "EGRET_TAGS")?,
                links: take(&mut ebpf, "EGRET_LINKS")?,
                counters: Mutex::new(take(&mut ebpf, "EGRET_COUNTERS")?),
                closed: Mutex::default(),
                stats: take(&mut ebpf, "EGRET_STATS")?,
            },
            closes: Mutex::new(Some(take(&mut ebpf, "EGRET_CLOSES")?)),
            agent_netns: crate::netns::own_netns_cookie()
                .map_err(|e| BpfError::Bpffs(format!("reading the agent's netns cookie: {e}")))?,
            attachment,
            logger: Mutex::new(logger),
            _ebpf: ebpf,
        };
        kernel.maps.configure(&KernelSettings {
            listen_port: opts.listen_port,
            block_quic: opts.block_quic,
            root_level: opts.root_level,
            capture_ports: opts.capture_ports.to_vec(),
            admin_listen: opts.admin_listen,
            agent_netns: kernel.agent_netns,
        })?;
        Ok(kernel)
    }
}

/// What the programs read from userspace; can change while they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSettings {
    pub listen_port: u16,
    pub block_quic: bool,
    pub root_level: u32,
    pub capture_ports: Vec<u16>,
    /// The admin listener sandboxes may not connect to.
    pub admin_listen: SocketAddr,
    /// [`Kernel::agent_netns`].
    pub agent_netns: u64,
}

/// The admin-listener fields of [`KConfig`].
fn admin_guard(cfg: &mut KConfig, admin: SocketAddr, agent_netns: u64) {
    cfg.admin_port = admin.port();
    cfg.agent_netns = agent_netns;
    let ip = admin.ip();
    if ip.is_unspecified() {
        return;
    }
    cfg.admin_scope = if ip.is_loopback() {
        egret_common::ADMIN_LOOPBACK
    } else {
        0
    };
    match ip {
        IpAddr::V4(v4) => {
            cfg.admin_family = egret_common::AF_INET;
            cfg.admin_addr = [u32::from_ne_bytes(v4.octets()), 0, 0, 0];
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => admin_guard(
                cfg,
                SocketAddr::new(IpAddr::V4(v4), admin.port()),
                agent_netns,
            ),
            None => {
                cfg.admin_family = egret_common::AF_INET6;
                let o = v6.octets();
                for (i, c) in o.chunks_exact(4).enumerate() {
                    cfg.admin_addr[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        },
    }
}

impl KernelMaps {
    /// Writes node settings and capture ports into the kernel maps; takes
    /// effect for the next `connect()`.
    pub fn configure(&self, k: &KernelSettings) -> Result<(), BpfError> {
        let mut cfg = KConfig {
            listen_port: k.listen_port,
            block_quic: u8::from(k.block_quic),
            root_level: k.root_level,
            ..KConfig::default()
        };
        admin_guard(&mut cfg, k.admin_listen, k.agent_netns);
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(0, cfg, 0)
            .map_err(|source| BpfError::Map {
                name: "EGRET_CONFIG",
                source,
            })?;
        let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<u16> = ports.keys().filter_map(Result::ok).collect();
        for p in stale {
            if !k.capture_ports.contains(&p) {
                let _ = ports.remove(&p);
            }
        }
        for p in &k.capture_ports {
            ports.insert(p, 1, 0).map_err(|source| BpfError::Map {
                name: "EGRET_PORTS",
                source,
            })?;
        }
        Ok(())
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

fn all_program_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = SOCK_ADDR_PROGS.to_vec();
    v.extend(SKB_PROGS.iter().map(|(n, _)| *n));
    v.push(SOCK_OPS_PROG);
    v
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
    link.pin(&path).map_err(|e| BpfError::Pin {
        path,
        message: e.to_string(),
    })?;
    Ok(())
}

fn attach_all(
    ebpf: &mut Ebpf,
    cgroup: std::os::fd::BorrowedFd<'_>,
    links_dir: &Path,
) -> Result<(), BpfError> {
    let perr = |name: &'static str| move |source| BpfError::Program { name, source };
    for name in SOCK_ADDR_PROGS {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(BpfError::MissingMap(name))?
            .try_into()
            .map_err(perr(name))?;
        prog.load().map_err(perr(name))?;
        let id = prog
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(perr(name))?;
        let link: FdLink = prog.take_link(id).map_err(perr(name))?.try_into().map_err(
            |e: aya::programs::links::LinkError| BpfError::Pin {
                path: links_dir.join(name),
                message: e.to_string(),
            },
        )?;
        pin(link, links_dir, name)?;
    }
    for (name, kind) in SKB_PROGS {
        let prog: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or(BpfError::MissingMap(name))?
            .try_into()
            .map_err(perr(name))?;
        prog.load().map_err(perr(name))?;
        let id = prog
            .attach(cgroup, kind, CgroupAttachMode::Single)
            .map_err(perr(name))?;
        let link: FdLink = prog.take_link(id).map_err(perr(name))?.try_into().map_err(
            |e: aya::programs::links::LinkError| BpfError::Pin {
                path: links_dir.join(name),
                message: e.to_string(),
            },
        )?;
        pin(link, links_dir, name)?;
    }
    let name = SOCK_OPS_PROG;
    let prog: &mut SockOps = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingMap(name))?
        .try_into()
        .map_err(perr(name))?;
    prog.load().map_err(perr(name))?;
    let id = prog
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(perr(name))?;
    let link: FdLink = prog.take_link(id).map_err(perr(name))?.try_into().map_err(
        |e: aya::programs::links::LinkError| BpfError::Pin {
            path: links_dir.join(name),
            message: e.to_string(),
        },
    )?;
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

    /// Sums and removes a closed socket's per-CPU payload counters.
    /// The final counters are kept a while for [`Self::peek_counters`].
    pub fn take_counters(&self, cookie: u64) -> Option<SkbCounters> {
        let sum = {
            let mut m = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            let sum = sum_counters(&m.get(&cookie, 0).ok()?);
            let _ = m.remove(&cookie);
            sum
        };
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cookie, sum);
        Some(sum)
    }

    /// A socket's payload counters so far (summed over CPUs), untouched;
    /// for a socket closed recently, its final counters.
    pub fn peek_counters(&self, cookie: u64) -> Option<SkbCounters> {
        let live = {
            let m = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            m.get(&cookie, 0).ok().map(|v| sum_counters(&v))
        };
        live.or_else(|| {
            self.closed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .by_cookie
                .get(&cookie)
                .copied()
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use egret_common::{AF_INET, AF_INET6};

    #[test]
    fn recently_closed_keeps_the_newest_and_evicts_the_oldest() {
        let mut rc = RecentlyClosed::default();
        let c = |n| SkbCounters {
            tx_bytes: n,
            ..SkbCounters::default()
        };
        for cookie in 0..(RecentlyClosed::CAP as u64 + 10) {
            rc.insert(cookie, c(cookie));
        }
        assert_eq!(rc.by_cookie.len(), RecentlyClosed::CAP);
        assert_eq!(rc.order.len(), RecentlyClosed::CAP);
        assert!(!rc.by_cookie.contains_key(&9));
        assert_eq!(rc.by_cookie.get(&10).map(|v| v.tx_bytes), Some(10));
        // A cookie seen again is updated in place, not queued twice.
        rc.insert(10, c(99));
        assert_eq!(rc.order.len(), RecentlyClosed::CAP);
        assert_eq!(rc.by_cookie.get(&10).map(|v| v.tx_bytes), Some(99));
    }

    fn v4(ip: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(ip), 0, 0, 0]
    }

    fn mapped(ip: [u8; 4]) -> [u32; 4] {
        [0, 0, 0xffff_u32.to_be(), u32::from_ne_bytes(ip)]
    }

    fn v6(ip: std::net::Ipv6Addr) -> [u32; 4] {
        let o = ip.octets();
        let mut w = [0u32; 4];
        for (i, c) in o.chunks_exact(4).enumerate() {
            w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        w
    }

    fn guard(admin: &str) -> KConfig {
        let mut c = KConfig::default();
        admin_guard(&mut c, admin.parse().unwrap(), 7);
        c
    }

    #[test]
    fn sandboxes_cannot_connect_to_the_admin_listener() {
        const AGENT: u64 = 7;
        const OTHER: u64 = 9;
        // Loopback: only from the agent's own netns.
        let c = guard("127.0.0.1:9464");
        assert!(c.admin_refused(9464, AF_INET, &v4([127, 0, 0, 1]), AGENT));
        assert!(c.admin_refused(9464, AF_INET6, &mapped([127, 0, 0, 1]), AGENT));
        assert!(!c.admin_refused(9464, AF_INET, &v4([127, 0, 0, 1]), OTHER));
        assert!(!c.admin_refused(9465, AF_INET, &v4([127, 0, 0, 1]), AGENT));
        assert!(!c.admin_refused(9464, AF_INET, &v4([10, 0, 0, 1]), AGENT));
        // A node address: from any netns.
        let c = guard("10.1.2.3:9464");
        assert!(c.admin_refused(9464, AF_INET, &v4([10, 1, 2, 3]), OTHER));
        assert!(c.admin_refused(9464, AF_INET, &v4([10, 1, 2, 3]), AGENT));
        assert!(!c.admin_refused(9464, AF_INET, &v4([10, 1, 2, 4]), OTHER));
        // IPv6 loopback.
        let c = guard("[::1]:9464");
        let lo = v6(std::net::Ipv6Addr::LOCALHOST);
        assert!(c.admin_refused(9464, AF_INET6, &lo, AGENT));
        assert!(!c.admin_refused(9464, AF_INET6, &lo, OTHER));
        assert!(!c.admin_refused(9464, AF_INET, &v4([127, 0, 0, 1]), AGENT));
        // Wildcard: the port on any address, from the agent's netns.
        let c = guard("0.0.0.0:9464");
        assert!(c.admin_refused(9464, AF_INET, &v4([192, 168, 1, 1]), AGENT));
        assert!(!c.admin_refused(9464, AF_INET, &v4([192, 168, 1, 1]), OTHER));
        assert!(!c.admin_refused(80, AF_INET, &v4([192, 168, 1, 1]), AGENT));
    }
}
