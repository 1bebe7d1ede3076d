//! What the running kernel can do, asked of the kernel itself: each program
//! type, map type and (program type, helper) pair egret's programs use is
//! probed by loading a minimal program or creating a minimal map (as
//! libbpf's and bpftool's probes do), and egret's own programs are put
//! through the verifier without being attached. No kernel version number
//! is compared: distribution kernels backport and disable features.
use aya::{
    maps::MapType,
    programs::{CgroupSkb, CgroupSock, CgroupSockAddr, ProgramError, ProgramType, SockOps},
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper, SyscallError},
    EbpfError, EbpfLoader,
};
use std::path::Path;

use super::{Attach, OBJECT, PROGRAMS};

/// One probed feature and what in egret needs it.
#[derive(Debug)]
pub struct Feature {
    pub name: String,
    pub needed_by: &'static str,
    /// `Err` when the probe itself could not run (not root, no bpf(2)).
    pub supported: Result<bool, ProbeError>,
}

/// A probe that could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error(transparent)]
    Map(#[from] SyscallError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The program types egret attaches, and what each does.
const PROGRAM_TYPES: &[(ProgramType, &str, &str)] = &[
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr",
        "tagging, redirect, the QUIC refusal, getpeername",
    ),
    (
        ProgramType::SockOps,
        "sock_ops",
        "connection links, close events",
    ),
    (
        ProgramType::CgroupSkb,
        "cgroup_skb",
        "per-socket wire bytes",
    ),
    (
        ProgramType::CgroupSock,
        "cgroup_sock",
        "raw socket refusal, unconnected socket cleanup",
    ),
];

/// The map types egret's programs declare.
const MAP_TYPES: &[(MapType, &str, &str)] = &[
    (MapType::RingBuf, "ringbuf", "close events"),
    (
        MapType::LruHash,
        "lru_hash",
        "socket tags, connection links",
    ),
    (
        MapType::LruPerCpuHash,
        "lru_percpu_hash",
        "per-socket byte counters",
    ),
    (MapType::Hash, "hash", "attributions, ports, node addresses"),
    (MapType::Array, "array", "configuration"),
    (MapType::PerCpuArray, "percpu_array", "statistics"),
];

/// Each (program type, helper) pair egret's programs call.
const HELPERS: &[(ProgramType, &str, BpfHelper, &str)] = &[
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr",
        BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
        "finding a task's sandbox",
    ),
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr",
        BpfHelper::BPF_FUNC_get_netns_cookie,
        "the socket's network namespace",
    ),
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr",
        BpfHelper::BPF_FUNC_get_socket_cookie,
        "socket identity",
    ),
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr",
        BpfHelper::BPF_FUNC_get_current_pid_tgid,
        "process.pid",
    ),
    (
        ProgramType::SockOps,
        "sock_ops",
        BpfHelper::BPF_FUNC_get_socket_cookie,
        "socket identity",
    ),
    (
        ProgramType::SockOps,
        "sock_ops",
        BpfHelper::BPF_FUNC_sock_ops_cb_flags_set,
        "state-change callbacks",
    ),
    (
        ProgramType::SockOps,
        "sock_ops",
        BpfHelper::BPF_FUNC_ringbuf_output,
        "close events",
    ),
    (
        ProgramType::CgroupSkb,
        "cgroup_skb",
        BpfHelper::BPF_FUNC_get_socket_cookie,
        "socket identity",
    ),
    (
        ProgramType::CgroupSkb,
        "cgroup_skb",
        BpfHelper::BPF_FUNC_skb_load_bytes,
        "reading TCP headers",
    ),
    (
        ProgramType::CgroupSock,
        "cgroup_sock",
        BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
        "finding a task's sandbox",
    ),
    (
        ProgramType::CgroupSock,
        "cgroup_sock",
        BpfHelper::BPF_FUNC_get_socket_cookie,
        "socket identity",
    ),
];

/// Probes every program type, map type and helper egret uses.
pub fn features() -> Vec<Feature> {
    let mut out = Vec::new();
    for (t, name, needed_by) in PROGRAM_TYPES {
        out.push(Feature {
            name: format!("program type {name}"),
            needed_by,
            supported: is_program_supported(*t).map_err(ProbeError::from),
        });
    }
    for (t, name, needed_by) in MAP_TYPES {
        out.push(Feature {
            name: format!("map type {name}"),
            needed_by,
            supported: is_map_supported(*t).map_err(ProbeError::from),
        });
    }
    // Not BPF, but as necessary: the agent tells its own connections from
    // sandboxes' by their netns cookie (getsockopt since Linux 5.14).
    out.push(Feature {
        name: "socket option SO_NETNS_COOKIE".into(),
        needed_by: "the agent's own network namespace cookie",
        supported: match crate::netns::own_netns_cookie() {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(false),
            Err(e) => Err(ProbeError::Io(e)),
        },
    });
    for (t, tname, helper, needed_by) in HELPERS {
        let hname = format!("{helper:?}");
        let hname = hname.strip_prefix("BPF_FUNC_").unwrap_or(&hname);
        out.push(Feature {
            name: format!("helper bpf_{hname} in {tname}"),
            needed_by,
            supported: is_helper_supported(*t, *helper).map_err(ProbeError::from),
        });
    }
    out
}

/// One of egret's own programs put through the verifier.
#[derive(Debug)]
pub struct Verdict {
    pub program: &'static str,
    /// The kernel's refusal (with the verifier's log), if any.
    pub result: Result<(), VerifyError>,
}

/// Why egret's object or one of its programs did not load.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not in egret's object")]
    Missing,
    #[error(transparent)]
    Load(#[from] ProgramError),
    #[error("loading egret's object: {0}")]
    Object(#[from] Box<EbpfError>),
    #[error("creating the probe's pin directory {path}: {source}")]
    PinDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Loads egret's embedded object and every program the agent attaches
/// into the kernel (nothing attached), so the kernel's verifier says
/// whether this kernel runs them. The object's maps are pinned by name, so
/// they are created in a directory of this probe's own under `bpffs` and
/// unpinned before returning: the probe never touches the agent's pins.
/// Everything is released on return.
pub fn verify_programs(bpffs: &Path) -> Result<Vec<Verdict>, VerifyError> {
    let dir = bpffs.join(format!("egret-probe-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|source| VerifyError::PinDir {
        path: dir.clone(),
        source,
    })?;
    let verdicts = load_and_verify(&dir);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(&dir);
    verdicts
}

fn load_and_verify(pins: &Path) -> Result<Vec<Verdict>, VerifyError> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins)
        .load(OBJECT)
        .map_err(Box::new)?;
    let mut out = Vec::new();
    for (name, how) in PROGRAMS {
        let result = match ebpf.program_mut(name) {
            None => Err(VerifyError::Missing),
            Some(prog) => load_only(prog, how).map_err(VerifyError::from),
        };
        out.push(Verdict {
            program: name,
            result,
        });
    }
    Ok(out)
}

fn load_only(prog: &mut aya::programs::Program, how: Attach) -> Result<(), ProgramError> {
    match how {
        Attach::SockAddr => <&mut CgroupSockAddr>::try_from(prog)?.load(),
        Attach::Skb(_) => <&mut CgroupSkb>::try_from(prog)?.load(),
        Attach::SockOps => <&mut SockOps>::try_from(prog)?.load(),
        Attach::Sock => <&mut CgroupSock>::try_from(prog)?.load(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_type_egret_attaches_is_probed() {
        for (_, how) in PROGRAMS {
            let t = match how {
                Attach::SockAddr => ProgramType::CgroupSockAddr,
                Attach::Skb(_) => ProgramType::CgroupSkb,
                Attach::SockOps => ProgramType::SockOps,
                Attach::Sock => ProgramType::CgroupSock,
            };
            assert!(PROGRAM_TYPES.iter().any(|(p, _, _)| *p == t));
            assert!(HELPERS.iter().any(|(p, _, _, _)| *p == t));
        }
    }
}
