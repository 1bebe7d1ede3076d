//! `egret doctor`: can this node run egret, and is the agent healthy?
use std::path::Path;

use crate::{api, bpf, cgroup, config::Config};

struct Check {
    name: &'static str,
    ok: bool,
    required: bool,
    detail: String,
}

fn kernel_version() -> Option<(u32, u32)> {
    let rel = nix::sys::utsname::uname().ok()?;
    let rel = rel.release().to_string_lossy().into_owned();
    let mut it = rel.split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Prints one line per check; true when every required check passed.
pub async fn run(cfg: &Config) -> bool {
    let mut checks = Vec::new();
    let kv = kernel_version();
    checks.push(Check {
        name: "kernel >= 5.15 (cgroup sock_addr/sock_ops/skb, ring buffer, netns cookie)",
        ok: kv.is_some_and(|v| v >= (5, 15)),
        required: true,
        detail: kv.map_or("unknown".into(), |(a, b)| format!("{a}.{b}")),
    });
    let mount = match &cfg.node.cgroup_mount {
        Some(m) => Ok(m.clone()),
        None => cgroup::detect_mount(),
    };
    checks.push(Check {
        name: "cgroup v2 mounted",
        ok: mount.is_ok(),
        required: true,
        detail: match &mount {
            Ok(m) => m.display().to_string(),
            Err(e) => e.to_string(),
        },
    });
    checks.push(Check {
        name: "BTF (/sys/kernel/btf/vmlinux)",
        ok: Path::new("/sys/kernel/btf/vmlinux").exists(),
        required: false,
        detail: "needed by future CO-RE programs; current programs do not require it".into(),
    });
    let root = nix::unistd::geteuid().is_root();
    checks.push(Check {
        name: "running as root",
        ok: root,
        required: true,
        detail: if root {
            "uid 0".into()
        } else {
            "egret run needs root or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN".into()
        },
    });
    let bpffs = bpf::is_bpffs(Path::new("/sys/fs/bpf"));
    checks.push(Check {
        name: "bpffs at /sys/fs/bpf",
        ok: true,
        required: false,
        detail: if bpffs {
            "mounted".into()
        } else {
            "not mounted; egret run mounts it".into()
        },
    });
    let ip = std::process::Command::new("ip").arg("-V").output().is_ok();
    checks.push(Check {
        name: "iproute2 (for egret exec --netns)",
        ok: ip,
        required: false,
        detail: if ip {
            "found".into()
        } else {
            "not found".into()
        },
    });
    let agent = api::Client::new(&cfg.node.api_socket).list().await;
    checks.push(Check {
        name: "agent reachable on the attribution API",
        ok: agent.is_ok(),
        required: false,
        detail: match agent {
            Ok(l) => format!("{} sandbox(es) registered", l.len()),
            Err(e) => e.to_string(),
        },
    });
    if let Some(ch) = &cfg.store.clickhouse {
        let r = match crate::sink::ClickHouseSink::new(ch) {
            Ok(s) => s.healthcheck().await,
            Err(e) => Err(e),
        };
        checks.push(Check {
            name: "ClickHouse reachable",
            ok: r.is_ok(),
            required: false,
            detail: match r {
                Ok(()) => ch.url.clone(),
                Err(e) => e.to_string(),
            },
        });
    }
    let mut all = true;
    for c in &checks {
        let mark = if c.ok {
            "ok"
        } else if c.required {
            "FAIL"
        } else {
            "warn"
        };
        println!("[{mark:>4}] {}: {}", c.name, c.detail);
        if c.required && !c.ok {
            all = false;
        }
    }
    all
}
