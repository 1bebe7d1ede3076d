//! `cargo xtask image`: the agent's container image, built on this machine
//! without pulling from any registry.
//!
//! 1. A minimal Debian root (`debootstrap --variant=minbase`, plus only what
//!    the agent needs at run time: iproute2 and ca-certificates, see
//!    deploy/Dockerfile's runtime stage), upgraded from bookworm-updates and
//!    bookworm-security, then stripped of apt lists, caches, docs, man pages
//!    and locales. It is cached in `target/image/` and rebuilt when the
//!    recipe changes, when it is older than [`ROOTFS_MAX_AGE`] (security
//!    updates) or with `--refresh`.
//! 2. The release `egret` binary (`cargo build --release -p egret --bin egret`),
//!    without its debug info (`objcopy --strip-debug`).
//! 3. `buildah` assembles the image from scratch: the root, the binary at
//!    /usr/local/bin/egret, and the Dockerfile's entrypoint, cmd, user and
//!    labels; committed as `egret:<version>` in the local containers-storage
//!    and written to `target/image/egret-<version>.oci.tar` (oci-archive).
//! 4. The committed image is checked from a fresh working container with
//!    `buildah run`: `egret --version`, `egret config check` of the
//!    ConfigMap's egret.yaml, and the tools the DaemonSet's init container
//!    runs.
//!
//! `buildah run` uses `--isolation chroot`: it needs no OCI runtime (runc or
//! crun are only recommended by Debian's buildah package, not installed).
//! Storage is buildah's default (overlay as root).
use std::{
    fs,
    os::unix::{ffi::OsStringExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};

use crate::{apt_install, output, root, run, target_dir};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// What the agent calls or reads at run time (deploy/Dockerfile says why).
const PACKAGES: &[&str] = &["iproute2", "ca-certificates"];
/// Bumped when the way the root is made or stripped changes, so cached
/// roots are rebuilt.
const RECIPE_VERSION: u32 = 1;
/// A cached root older than this is rebuilt, to pick up security updates.
const ROOTFS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// What the host needs to build the image.
const HOST_PACKAGES: &[&str] = &["debootstrap", "buildah", "binutils"];
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the image check puts the ConfigMap's config inside the container
/// (the DaemonSet's EGRET_CONFIG).
const CONFIG_IN_IMAGE: &str = "/etc/egret/egret.yaml";
/// What the DaemonSet's install-ca init container runs besides the shell.
const INIT_TOOLS: &[&str] = &["sh", "install", "mkdir", "chmod", "mv"];

pub struct Options {
    /// Rebuild the Debian root even if the cached one is usable.
    pub refresh: bool,
    /// Skip writing the oci-archive.
    pub no_archive: bool,
}

pub fn image(opts: &Options) -> Result<()> {
    let started = Instant::now();
    if output(Command::new("id").arg("-u"))? != "0" {
        bail!("cargo xtask image runs as root (debootstrap, chroot, buildah mount)");
    }
    apt_install(HOST_PACKAGES)?;
    let root = root();
    let work = target_dir().join("image");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let rootfs = debian_root(&work, opts.refresh)?;

    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "egret",
        "--bin",
        "egret",
    ]))?;
    let bin = target_dir().join("release/egret");

    let version = env!("CARGO_PKG_VERSION");
    let tag = format!("egret:{version}");
    let id = assemble(&rootfs, &bin, &tag, version, &root)?;
    println!("image: committed {tag} ({id})");

    let config = work.join("configmap-egret.yaml");
    fs::write(
        &config,
        configmap_config(&root.join("deploy/configmap.yaml"))?,
    )
    .with_context(|| format!("writing {}", config.display()))?;
    if let Err(e) = check(&tag, &config) {
        // An image that fails its checks is not left behind under the tag.
        let _ = Command::new("buildah")
            .args(["rmi", &tag])
            .stdout(Stdio::null())
            .status();
        return Err(e.context(format!("{tag} failed its checks and was removed")));
    }

    let size = output(Command::new("buildah").args([
        "images",
        "--noheading",
        "--format",
        "{{.Size}}",
        &tag,
    ]))?;
    println!("image: {tag}  id {id}  size {size}");
    if !opts.no_archive {
        let archive = work.join(format!("egret-{version}.oci.tar"));
        let _ = fs::remove_file(&archive);
        run(Command::new("buildah")
            .args(["push", "--quiet", &tag])
            .arg(format!("oci-archive:{}:{tag}", archive.display())))?;
        let len = fs::metadata(&archive)
            .with_context(|| format!("reading {}", archive.display()))?
            .len();
        println!(
            "image: oci-archive {} ({:.1} MB)",
            archive.display(),
            len as f64 / 1e6
        );
    }
    println!("image: done in {:.0?}", started.elapsed());
    Ok(())
}

/// What the cached root was made from; a different recipe rebuilds it.
fn recipe() -> String {
    format!(
        "recipe {RECIPE_VERSION}\nsuite {SUITE}\nmirror {MIRROR}\nsecurity {SECURITY_MIRROR}\npackages {}\n",
        PACKAGES.join(",")
    )
}

/// The stripped Debian root under `work`, built when missing or stale.
fn debian_root(work: &Path, refresh: bool) -> Result<PathBuf> {
    let rootfs = work.join(format!("rootfs-{SUITE}"));
    let stamp = work.join(format!("rootfs-{SUITE}.stamp"));
    let age = fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    let same_recipe = fs::read_to_string(&stamp).is_ok_and(|s| s == recipe());
    match age {
        Some(age) if !refresh && same_recipe && age < ROOTFS_MAX_AGE && rootfs.is_dir() => {
            println!(
                "image: reusing the Debian root {} (built {:.1} days ago; --refresh rebuilds it)",
                rootfs.display(),
                age.as_secs_f64() / 86400.0
            );
            return Ok(rootfs);
        }
        _ => {}
    }
    let _ = fs::remove_file(&stamp);
    let tmp = work.join(format!("rootfs-{SUITE}.tmp"));
    remove_root(&tmp)?;
    let t = Instant::now();
    println!("image: debootstrap {SUITE} into {}", tmp.display());
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .args([SUITE])
        .arg(&tmp)
        .arg(MIRROR))?;
    // debootstrap installs the release as published; updates and security
    // fixes come from the -updates and -security suites.
    fs::write(
        tmp.join("etc/apt/sources.list"),
        format!(
            "deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\ndeb {SECURITY_MIRROR} {SUITE}-security main\n"
        ),
    )?;
    for args in [
        &["apt-get", "update", "-q"][..],
        &["apt-get", "upgrade", "-y", "-q", "--no-install-recommends"][..],
        &["apt-get", "clean"][..],
    ] {
        run(Command::new("chroot")
            .arg(&tmp)
            .args(args)
            .env("PATH", PATH_ENV)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    strip_root(&tmp)?;
    remove_root(&rootfs)?;
    fs::rename(&tmp, &rootfs)?;
    fs::write(&stamp, recipe())?;
    println!(
        "image: Debian root ready in {:.0?} ({})",
        t.elapsed(),
        output(Command::new("du").arg("-sh").arg(&rootfs))?
            .split_whitespace()
            .next()
            .unwrap_or("?")
    );
    Ok(rootfs)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Removes a Debian root. A debootstrap that was killed can leave /proc,
/// /sys or a bind mount of the host's /dev mounted inside it: those are
/// unmounted first, and nothing is deleted while any mount remains.
fn remove_root(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    for m in mounts_under(&dir)? {
        let _ = Command::new("umount").arg(&m).status();
    }
    let left = mounts_under(&dir)?;
    if !left.is_empty() {
        bail!(
            "not removing {}: still mounted inside it: {left:?}",
            dir.display()
        );
    }
    remove_dir(&dir)
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut found = mount_points_under(&info, dir);
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

/// The mount points (5th field of mountinfo, octal escapes decoded) at or
/// below `dir`.
fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|field| {
            let mut out = Vec::new();
            let b = field.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let octal = b
                    .get(i + 1..i + 4)
                    .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
                match (b[i], octal) {
                    (b'\\', Some(c)) => {
                        out.push(c);
                        i += 4;
                    }
                    (c, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        })
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Removes the contents of `dir` (not `dir` itself), keeping the entries
/// `keep` accepts.
fn empty_dir(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if keep(&path) {
            continue;
        }
        if path.is_dir() && !path.is_symlink() {
            remove_dir(&path)?;
        } else {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// What a container root does not need: package lists and caches (the
/// image is never `apt-get`ed in place; rebuild it), documentation except
/// the copyright files, man and info pages, translations, logs of the
/// build, and the build host's resolv.conf and hostname (the runtime
/// provides both).
fn strip_root(r: &Path) -> Result<()> {
    let nothing = |_: &Path| false;
    for dir in [
        "var/lib/apt/lists",
        "var/cache/apt",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/lintian",
        "var/log",
    ] {
        empty_dir(&r.join(dir), &nothing)?;
    }
    // usr/share/doc/<package>/copyright stays: the licences of what ships.
    let doc = r.join("usr/share/doc");
    for pkg in fs::read_dir(&doc).with_context(|| format!("reading {}", doc.display()))? {
        let pkg = pkg?.path();
        if pkg.is_dir() && !pkg.is_symlink() {
            empty_dir(&pkg, &|p| p.file_name().is_some_and(|n| n == "copyright"))?;
        }
    }
    for file in [
        "etc/resolv.conf",
        "etc/hostname",
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
        "var/lib/dpkg/status-old",
        "var/lib/dpkg/diversions-old",
    ] {
        let _ = fs::remove_file(r.join(file));
    }
    Ok(())
}

/// A buildah working container, removed when dropped (a failed build
/// leaves nothing behind).
struct WorkingContainer(String);

impl WorkingContainer {
    fn from(image: &str, purpose: &str) -> Result<Self> {
        let name = format!("egret-{purpose}-{}", std::process::id());
        run(Command::new("buildah")
            .args(["from", "--quiet", "--name", &name, image])
            .stdout(Stdio::null()))?;
        Ok(Self(name))
    }

    /// `buildah run` with the chroot isolation; its stdout.
    fn run(&self, args: &[&str]) -> Result<String> {
        output(
            Command::new("buildah")
                .args(["run", "--isolation", "chroot", &self.0, "--"])
                .args(args),
        )
    }
}

impl Drop for WorkingContainer {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .args(["rm", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Builds the image from scratch and commits it as `tag`; its id.
fn assemble(rootfs: &Path, bin: &Path, tag: &str, version: &str, root: &Path) -> Result<String> {
    let previous = output(Command::new("buildah").args([
        "images",
        "--noheading",
        "--no-trunc",
        "--format",
        "{{.ID}}",
        tag,
    ]))
    .ok();
    let ctr = WorkingContainer::from("scratch", "image")?;
    let mnt = PathBuf::from(output(Command::new("buildah").args(["mount", &ctr.0]))?);
    // cp -a keeps owners, modes, hard links and xattrs (`buildah copy` would
    // make every file root's).
    let copied = run(Command::new("cp").arg("-a").arg(rootfs.join(".")).arg(&mnt)).and_then(|()| {
        // Without the DWARF the release profile keeps (`debug = 1`): 116 MB
        // become 17 MB. The symbol table stays, so backtraces name functions.
        let dest = mnt.join("usr/local/bin/egret");
        run(Command::new("objcopy")
            .arg("--strip-debug")
            .arg(bin)
            .arg(&dest))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
        Ok(())
    });
    output(Command::new("buildah").args(["umount", &ctr.0]))?;
    copied?;

    let mut revision = output(
        Command::new("git")
            .current_dir(root)
            .args(["rev-parse", "HEAD"]),
    )
    .unwrap_or_else(|_| "unknown".into());
    if output(Command::new("git").current_dir(root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_ok_and(|s| !s.is_empty())
    {
        revision.push_str("+dirty");
    }
    // As deploy/Dockerfile's runtime stage: root (the agent requires uid 0),
    // `egret run` by default.
    run(Command::new("buildah")
        .args(["config", "--os", "linux", "--arch", oci_arch()?])
        .args(["--env", &format!("PATH={PATH_ENV}")])
        .args(["--workingdir", "/", "--user", "0:0"])
        .args(["--entrypoint", r#"["/usr/local/bin/egret"]"#])
        .args(["--cmd", r#"["run"]"#])
        .args(["--label", "org.opencontainers.image.title=egret"])
        .args([
            "--label",
            "org.opencontainers.image.description=eBPF + userspace capture agent for AI-agent sandboxes",
        ])
        .args(["--label", "org.opencontainers.image.licenses=MIT OR Apache-2.0"])
        .args(["--label", &format!("org.opencontainers.image.version={version}")])
        .args(["--label", &format!("org.opencontainers.image.revision={revision}")])
        .arg(&ctr.0))?;
    let id = output(
        Command::new("buildah").args(["commit", "--quiet", "--format", "oci", "--rm", &ctr.0, tag]),
    )?;
    // A rebuild moves the tag; drop the image it left untagged.
    if let Some(old) = previous.filter(|old| !old.is_empty() && *old != id) {
        let _ = Command::new("buildah")
            .args(["rmi", &old])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(id)
}

/// The OCI name of this machine's architecture (debootstrap installs the
/// host's).
fn oci_arch() -> Result<&'static str> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no OCI architecture name known for {other}"),
    })
}

/// Runs the committed image's checks in a fresh working container.
fn check(tag: &str, config: &Path) -> Result<()> {
    let ctr = WorkingContainer::from(tag, "image-check")?;
    let version = ctr.run(&["/usr/local/bin/egret", "--version"])?;
    println!("image check: egret --version: {version}");
    run(Command::new("buildah")
        .args(["copy", "--quiet", &ctr.0])
        .arg(config)
        .arg(CONFIG_IN_IMAGE)
        .stdout(Stdio::null()))?;
    let checked = ctr.run(&["/usr/local/bin/egret", "config", "check", CONFIG_IN_IMAGE])?;
    println!("image check: egret config check (deploy/configmap.yaml's egret.yaml): {checked}");
    let script = format!(
        "for t in {}; do command -v \"$t\"; done",
        INIT_TOOLS.join(" ")
    );
    let found = ctr.run(&["/bin/sh", "-ec", &script])?;
    let found: Vec<&str> = found.lines().collect();
    if found.len() != INIT_TOOLS.len() {
        bail!(
            "the image lacks tools the DaemonSet's init container runs: found {found:?} of {INIT_TOOLS:?}"
        );
    }
    let ip = ctr.run(&["ip", "-V"])?;
    println!(
        "image check: init container tools {}; {ip}",
        found.join(" ")
    );
    Ok(())
}

/// The agent config the ConfigMap in `path` ships (`data["egret.yaml"]`).
fn configmap_config(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    config_of_configmap(&text).with_context(|| format!("in {}", path.display()))
}

fn config_of_configmap(text: &str) -> Result<String> {
    let doc: serde_norway::Value = serde_norway::from_str(text)?;
    match doc.get("data").and_then(|d| d.get("egret.yaml")) {
        Some(serde_norway::Value::String(s)) => Ok(s.clone()),
        _ => bail!("no data[\"egret.yaml\"] string in the ConfigMap"),
    }
}

#[cfg(test)]
mod tests {
    use std::env;

    use super::*;

    #[test]
    fn configmap_config_is_the_egret_yaml_block() {
        let cm = "apiVersion: v1\nkind: ConfigMap\ndata:\n  egret.yaml: |\n    node:\n      blockQuic: true\n";
        assert_eq!(
            config_of_configmap(cm).unwrap(),
            "node:\n  blockQuic: true\n"
        );
        assert!(config_of_configmap("apiVersion: v1\ndata: {}\n").is_err());
    }

    #[test]
    fn the_shipped_configmap_has_a_config() {
        let cfg = configmap_config(&root().join("deploy/configmap.yaml")).unwrap();
        assert!(cfg.contains("node:"), "{cfg}");
    }

    #[test]
    fn mount_points_under_a_root_are_found_with_escapes_decoded() {
        let info = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
90 22 0:5 / /w/t\\040x/rootfs.tmp/proc rw - proc proc rw
91 22 0:6 / /w/t\\040x/rootfs.tmp/dev rw - tmpfs nodev rw
92 22 0:7 / /w/t\\040x/rootfs.tmp2 rw - tmpfs x rw
";
        assert_eq!(
            mount_points_under(info, Path::new("/w/t x/rootfs.tmp")),
            [
                PathBuf::from("/w/t x/rootfs.tmp/proc"),
                PathBuf::from("/w/t x/rootfs.tmp/dev")
            ]
        );
        assert!(mount_points_under(info, Path::new("/elsewhere")).is_empty());
    }

    #[test]
    fn strip_root_keeps_copyright_and_removes_the_rest() {
        let r = env::temp_dir().join(format!("egret-strip-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&r);
        for d in [
            "usr/share/doc/pkg",
            "var/lib/apt/lists",
            "usr/share/man/man1",
            "etc",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            "usr/share/doc/pkg/copyright",
            "usr/share/doc/pkg/changelog.gz",
            "var/lib/apt/lists/deb.debian.org_InRelease",
            "usr/share/man/man1/ip.1.gz",
            "etc/resolv.conf",
            "etc/passwd",
        ] {
            fs::write(r.join(f), "x").unwrap();
        }
        strip_root(&r).unwrap();
        assert!(r.join("usr/share/doc/pkg/copyright").exists());
        assert!(r.join("etc/passwd").exists());
        assert!(r.join("var/lib/apt/lists").is_dir());
        for gone in [
            "usr/share/doc/pkg/changelog.gz",
            "var/lib/apt/lists/deb.debian.org_InRelease",
            "usr/share/man/man1",
            "etc/resolv.conf",
        ] {
            assert!(!r.join(gone).exists(), "{gone} survived");
        }
        fs::remove_dir_all(&r).unwrap();
    }
}
