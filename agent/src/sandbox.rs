//! `egret exec`: run a command as a fresh sandbox.
//!
//! Creates the sandbox cgroup under the root (and, with `--netns`, a network
//! namespace joined to the host by a veth pair), registers it with the
//! running agent, runs the command inside both, forwards SIGINT/SIGTERM,
//! and tears everything down again whatever happens.
use std::{
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    process::Command as StdCommand,
};

use tokio::process::Command;

use crate::{
    api,
    attribution::{Attribution, SandboxSpec},
    cgroup, netns,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("creating sandbox cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network namespace: {0}")]
    Netns(String),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("--user {0}")]
    User(String),
}

pub struct ExecOptions {
    pub sandbox_root: PathBuf,
    pub api_socket: PathBuf,
    pub attribution: Attribution,
    pub netns: bool,
    pub trust_bundle: Option<PathBuf>,
    /// Run the workload as this user (uid and gid); None = stay uid 0.
    pub user: Option<RunAs>,
    /// Keep every capability (`--privileged`): the sandbox can then bypass
    /// capture (raw sockets, nftables) and leave its cgroup.
    pub privileged: bool,
    pub command: Vec<String>,
}

/// A user the workload runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `NAME`, `UID` or `UID:GID` (a name's gid is its primary group).
    pub fn parse(spec: &str) -> Result<RunAs, SandboxError> {
        let bad = |why: &str| SandboxError::User(format!("{spec:?}: {why}"));
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, primary) = match u.parse::<u32>() {
            Ok(uid) => (uid, None),
            Err(_) => {
                let user = nix::unistd::User::from_name(u)
                    .map_err(|e| bad(&e.to_string()))?
                    .ok_or_else(|| bad("no such user"))?;
                (user.uid.as_raw(), Some(user.gid.as_raw()))
            }
        };
        let gid = match g {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => nix::unistd::Group::from_name(g)
                    .map_err(|e| bad(&e.to_string()))?
                    .ok_or_else(|| bad("no such group"))?
                    .gid
                    .as_raw(),
            },
            None => primary.unwrap_or(uid),
        };
        Ok(RunAs { uid, gid })
    }
}

/// Capabilities a sandbox workload never gets (unless `--privileged`):
/// with them it could bypass capture or the boundary — raw/packet sockets
/// and firewall rules (NET_RAW, NET_ADMIN), mounts, namespaces and cgroup
/// moves (SYS_ADMIN), kernel programs and pins (BPF, PERFMON, SYS_ADMIN),
/// modules and raw I/O (SYS_MODULE, SYS_RAWIO), other processes
/// (SYS_PTRACE), LSM policy (MAC_ADMIN).
pub const DROPPED_CAPS: [u32; 9] = [
    12, /* NET_ADMIN */
    13, /* NET_RAW */
    16, /* SYS_MODULE */
    17, /* SYS_RAWIO */
    19, /* SYS_PTRACE */
    21, /* SYS_ADMIN */
    33, /* MAC_ADMIN */
    38, /* PERFMON */
    39, /* BPF */
];

/// Drops [`DROPPED_CAPS`] from the bounding, ambient, inheritable,
/// permitted and effective sets, and sets no_new_privs (no setuid binary
/// gets them back). Async-signal-safe: called between fork and exec.
fn drop_caps() -> std::io::Result<()> {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let last = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    unsafe {
        for cap in DROPPED_CAPS {
            // EINVAL: a capability this kernel does not know; nothing to drop.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        last(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) as _)?;
        let mut hdr = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        last(libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()))?;
        for cap in DROPPED_CAPS {
            let (i, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
            data[i].effective &= !bit;
            data[i].permitted &= !bit;
            data[i].inheritable &= !bit;
        }
        last(libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()))?;
        last(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _)?;
    }
    Ok(())
}

/// Switches to `user` (no supplementary groups). Async-signal-safe.
fn switch_user(user: RunAs) -> std::io::Result<()> {
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(user.gid) != 0
            || libc::setuid(user.uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Owns what exec created; removes it on drop, even on error paths.
struct Resources {
    cgroup: Option<PathBuf>,
    netns: Option<String>,
}

impl Drop for Resources {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cgroup::remove(&cg) {
                eprintln!("egret: removing cgroup {}: {e}", cg.display());
            }
        }
        if let Some(ns) = self.netns.take() {
            let _ = StdCommand::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), SandboxError> {
    let out = StdCommand::new("ip")
        .args(args)
        .output()
        .map_err(|e| SandboxError::Netns(format!("running ip (iproute2): {e}")))?;
    if !out.status.success() {
        return Err(SandboxError::Netns(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Creates `egret-<short>` with loopback up and a /30 on a veth to the host.
fn create_netns(short: &str) -> Result<(String, String), SandboxError> {
    let name = format!("egret-{short}");
    ip(&["netns", "add", &name])?;
    ip(&["-n", &name, "link", "set", "lo", "up"])?;
    let host_if = format!("eg{short}h");
    let sb_if = format!("eg{short}s");
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", &sb_if, "netns", &name,
    ])?;
    // Pick a free /30 in 10.231.0.0/16 for this pair.
    let used = StdCommand::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let seed = u32::from_str_radix(&short[..4.min(short.len())], 16).unwrap_or(1);
    let mut host_ip = String::new();
    let mut sb_ip = String::new();
    for i in 0..16384u32 {
        let n = (seed + i) % 16384;
        let base = n * 4;
        let (a, b) = (base / 256, base % 256);
        let h = format!("10.231.{a}.{}", b + 1);
        if !used.contains(&format!("{h}/")) {
            host_ip = h;
            sb_ip = format!("10.231.{a}.{}", b + 2);
            break;
        }
    }
    ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
    ip(&["link", "set", &host_if, "up"])?;
    ip(&[
        "-n",
        &name,
        "addr",
        "add",
        &format!("{sb_ip}/30"),
        "dev",
        &sb_if,
    ])?;
    ip(&["-n", &name, "link", "set", &sb_if, "up"])?;
    ip(&["-n", &name, "route", "add", "default", "via", &host_ip])?;
    Ok((name, host_ip))
}

/// Runs the command as a sandbox; returns its exit status code.
pub async fn exec(opts: ExecOptions) -> Result<i32, SandboxError> {
    let short = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let id = format!("sb-{short}");
    let mut res = Resources {
        cgroup: None,
        netns: None,
    };
    let cg = opts.sandbox_root.join(&id);
    std::fs::create_dir_all(&cg).map_err(|source| SandboxError::Cgroup {
        path: cg.clone(),
        source,
    })?;
    res.cgroup = Some(cg.clone());
    let mut netns_path = None;
    if opts.netns {
        let (name, host_ip) = create_netns(&short)?;
        res.netns = Some(name.clone());
        netns_path = Some(netns::named(&name));
        eprintln!("egret: sandbox netns {name}, host reachable at {host_ip}");
    }
    let client = api::Client::new(&opts.api_socket);
    client
        .register(
            &id,
            &SandboxSpec {
                cgroup: id.clone(),
                netns: netns_path.clone(),
                attribution: opts.attribution.clone(),
            },
        )
        .await?;
    eprintln!("egret: invocation {}", opts.attribution.invocation_id);
    let status = run_child(&opts, &cg, netns_path.as_deref()).await;
    if let Err(e) = client.unregister(&id).await {
        eprintln!("egret: unregistering {id}: {e}");
    }
    drop(res);
    status
}

async fn run_child(
    opts: &ExecOptions,
    cg: &Path,
    netns: Option<&Path>,
) -> Result<i32, SandboxError> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(cg.join("cgroup.procs"))
        .map_err(|source| SandboxError::Cgroup {
            path: cg.to_owned(),
            source,
        })?;
    let ns = match netns {
        Some(p) => Some(
            std::fs::File::open(p)
                .map_err(|e| SandboxError::Netns(format!("opening {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let mut cmd = Command::new(&opts.command[0]);
    cmd.args(&opts.command[1..]);
    cmd.env("EGRET_INVOCATION_ID", &opts.attribution.invocation_id);
    if let Some(bundle) = &opts.trust_bundle {
        for (var, _) in crate::tls::TRUST_VARIABLES {
            cmd.env(var, bundle);
        }
    }
    let procs_fd = procs.as_raw_fd();
    let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
    let (privileged, user) = (opts.privileged, opts.user);
    if privileged {
        eprintln!(
            "egret: WARNING: --privileged: the workload keeps every capability; it can open raw sockets, change firewall rules, leave its cgroup and bypass capture"
        );
    } else if user.is_none() && nix::unistd::geteuid().is_root() {
        eprintln!(
            "egret: the workload runs as uid 0 without {} capabilities; uid 0 still owns root's files (cgroup.procs, bpffs pins, the CA key): use --user for untrusted code",
            DROPPED_CAPS.len()
        );
    }
    // SAFETY: only async-signal-safe syscalls (write, setns, prctl,
    // capget/capset, setgroups/setgid/setuid) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Writing "0" moves the writer: the child joins the sandbox
            // cgroup before exec, so every socket it makes is tagged.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if !privileged {
                drop_caps()?;
            }
            if let Some(u) = user {
                switch_user(u)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
        cmd: opts.command[0].clone(),
        source,
    })?;
    drop(procs);
    drop(ns);
    let pid = child.id();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|source| SandboxError::Spawn {
            cmd: "signal handler".into(),
            source,
        })?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| SandboxError::Spawn {
            cmd: "signal handler".into(),
            source,
        })?;
    loop {
        tokio::select! {
            st = child.wait() => {
                let st = st.map_err(|source| SandboxError::Spawn { cmd: opts.command[0].clone(), source })?;
                use std::os::unix::process::ExitStatusExt;
                return Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
            }
            _ = sigint.recv() => forward(pid, nix::sys::signal::Signal::SIGINT),
            _ = sigterm.recv() => forward(pid, nix::sys::signal::Signal::SIGTERM),
        }
    }
}

fn forward(pid: Option<u32>, sig: nix::sys::signal::Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_parses_names_ids_and_groups() {
        assert_eq!(
            RunAs::parse("1234").unwrap(),
            RunAs {
                uid: 1234,
                gid: 1234
            }
        );
        assert_eq!(
            RunAs::parse("1234:99").unwrap(),
            RunAs { uid: 1234, gid: 99 }
        );
        let root = RunAs::parse("root").unwrap();
        assert_eq!(root, RunAs { uid: 0, gid: 0 });
        assert_eq!(RunAs::parse("root:root").unwrap(), root);
        assert!(matches!(
            RunAs::parse("no-such-user-egret"),
            Err(SandboxError::User(_))
        ));
    }
}
