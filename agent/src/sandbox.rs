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
}

pub struct ExecOptions {
    pub sandbox_root: PathBuf,
    pub api_socket: PathBuf,
    pub attribution: Attribution,
    pub netns: bool,
    pub trust_bundle: Option<PathBuf>,
    pub command: Vec<String>,
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
        for var in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
        ] {
            cmd.env(var, bundle);
        }
    }
    let procs_fd = procs.as_raw_fd();
    let ns_fd = ns.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: only async-signal-safe syscalls (write, setns) run between fork and exec.
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
