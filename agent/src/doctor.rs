//! `egret doctor`: can this node run egret, and is the agent healthy?
use std::path::Path;

use crate::{api, bpf, cgroup, config::Config};

struct Check {
    name: String,
    ok: bool,
    required: bool,
    detail: String,
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The kernels the privileged suite passed on (`cargo xtask vm-test` and
/// the host's own run; docs/operations.md has the matrix).
const VERIFIED_KERNELS: &str = "6.1, 6.12, 6.18";

/// Prints one line per check; true when every required check passed.
pub async fn run(cfg: &Config) -> bool {
    let mut checks = Vec::new();
    checks.push(Check {
        name: "kernel release".into(),
        ok: true,
        required: false,
        detail: format!(
            "{} (verified: {VERIFIED_KERNELS}; features are probed below, not inferred from the version)",
            kernel_release()
        ),
    });
    kernel_features(&mut checks);
    let mount = match &cfg.node.cgroup_mount {
        Some(m) => Ok(m.clone()),
        None => cgroup::detect_mount(),
    };
    checks.push(Check {
        name: "cgroup v2 mounted".into(),
        ok: mount.is_ok(),
        required: true,
        detail: match &mount {
            Ok(m) => m.display().to_string(),
            Err(e) => e.to_string(),
        },
    });
    checks.push(Check {
        name: "BTF (/sys/kernel/btf/vmlinux)".into(),
        ok: Path::new("/sys/kernel/btf/vmlinux").exists(),
        required: false,
        detail: "not required: egret's programs read only the stable UAPI contexts (__sk_buff, bpf_sock_ops, bpf_sock_addr, bpf_sock), which the verifier maps per kernel".into(),
    });
    let root = nix::unistd::geteuid().is_root();
    checks.push(Check {
        name: "running as root".into(),
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
        name: "bpffs at /sys/fs/bpf".into(),
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
        name: "iproute2 (for egret exec --netns)".into(),
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
        name: "agent reachable on the attribution API".into(),
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
            name: "ClickHouse reachable".into(),
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

/// Asks the kernel (by loading minimal programs and maps, then egret's own
/// programs through the verifier) whether it runs what egret needs.
fn kernel_features(checks: &mut Vec<Check>) {
    for f in bpf::probe::features() {
        let (ok, detail) = match f.supported {
            Ok(true) => (true, format!("supported (for {})", f.needed_by)),
            Ok(false) => (false, format!("missing: no {}", f.needed_by)),
            Err(e) => (false, format!("could not probe: {e}")),
        };
        checks.push(Check {
            name: f.name,
            ok,
            required: true,
            detail,
        });
    }
    match bpf::probe::verify_programs(Path::new("/sys/fs/bpf")) {
        Ok(verdicts) => {
            for v in verdicts {
                checks.push(Check {
                    name: format!("verifier accepts {}", v.program),
                    ok: v.result.is_ok(),
                    required: true,
                    detail: match v.result {
                        Ok(()) => "loaded (not attached)".into(),
                        Err(e) => last_lines(&format!("{e:#}"), 3),
                    },
                });
            }
        }
        Err(e) => checks.push(Check {
            name: "egret's programs load".into(),
            ok: false,
            required: true,
            detail: last_lines(&e.to_string(), 3),
        }),
    }
}

/// The end of a verifier log, which says why, on one line (its closing
/// statistics left out).
fn last_lines(text: &str, n: usize) -> String {
    const STATS: [&str; 3] = ["verification time", "stack depth", "processed "];
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !STATS.iter().any(|s| l.starts_with(s)))
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}
