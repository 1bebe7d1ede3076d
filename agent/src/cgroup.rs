//! cgroup v2 paths: finding the mount, the sandbox root and sandbox cgroups.
use std::{
    io,
    path::{Path, PathBuf},
};

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn detect_mount() -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        // "... mountpoint opts ... - fstype source superopts"
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mp));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no cgroup v2 mount found in /proc/self/mountinfo",
    ))
}

/// Resolved node paths shared by the subcommands.
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub cgroup_mount: PathBuf,
    pub sandbox_root: PathBuf,
}

impl NodePaths {
    /// `mount`: the configured cgroup v2 mount (detected when `None`);
    /// `sandbox_root`: the sandbox root relative to it.
    pub fn resolve(mount: Option<&Path>, sandbox_root: &Path) -> io::Result<NodePaths> {
        let mount = match mount {
            Some(m) => m.to_owned(),
            None => detect_mount()?,
        };
        Ok(NodePaths {
            sandbox_root: mount.join(sandbox_root),
            cgroup_mount: mount,
        })
    }

    /// The sandbox root as it appears in /proc/PID/cgroup, e.g. `/egret.slice`.
    pub fn sandbox_root_rel(&self) -> String {
        format!(
            "/{}",
            self.sandbox_root
                .strip_prefix(&self.cgroup_mount)
                .unwrap_or(&self.sandbox_root)
                .display()
        )
    }
}

/// Depth of `path` below the cgroup v2 mount (the mount itself is level 0).
pub fn level(mount: &Path, path: &Path) -> u32 {
    path.strip_prefix(mount)
        .map(|p| p.components().count() as u32)
        .unwrap_or(0)
}

/// The cgroup path of a process relative to the v2 mount, e.g. `/egret.slice/sb1`.
pub fn of_pid(pid: u32) -> io::Result<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 entry"))
}

/// Kills everything left in a cgroup and removes it.
pub fn remove(path: &Path) -> io::Result<()> {
    let kill = path.join("cgroup.kill");
    if kill.exists() {
        let _ = std::fs::write(&kill, "1");
    }
    let mut last = None;
    for _ in 0..100 {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(last.unwrap_or_else(|| io::Error::other("cgroup not removed")))
}
