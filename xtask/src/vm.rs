//! `cargo xtask vm-test`: the privileged suites on the kernels users run,
//! each booted under QEMU with virtme-ng (as Aya runs its integration tests
//! in a VM per kernel).
//!
//! The kernels are Debian's generic `-amd64` images (6.1 LTS and 6.12
//! from bookworm and its security/backports suites; 5.10 from bullseye on
//! request), found with a private apt state
//! under `target/vm/apt` (the host's sources are not touched), downloaded
//! and unpacked under `target/vm/kernels`. The guest sees the host's file
//! system read-only (virtme-ng), so the test binaries built here run inside
//! it as they are; each suite's output, exit code and duration are written
//! to `target/vm/out/<kernel>/`, a directory the guest may write.
//!
//! QEMU runs in TCG (software emulation) where the CPU has no hardware
//! virtualization, as on this machine kind: slow, so the default is a
//! subset (the kernel suite and one end-to-end L7 transaction) and
//! `--full` runs every privileged suite that needs nothing from outside
//! the guest.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{apt_install, output, root, run, target_dir, venv_dir};

/// virtme-ng, pinned: the version the recipe in docs/operations.md was
/// verified with.
const VIRTME_NG: &str = "virtme-ng==1.42";
/// What booting a kernel under QEMU needs from Debian (kmod: `depmod`,
/// which virtme-ng runs; busybox: its initramfs).
const VM_APT_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static"];

/// A kernel series of the matrix: the apt name pattern of its generic
/// image (newest ABI wins).
pub struct Series {
    pub name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        prefix: "linux-image-5.10.",
        suffix: "-amd64-unsigned",
    },
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.",
        suffix: "-amd64-unsigned",
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64-unsigned",
    },
];

/// A privileged suite and the tests of it that run in a guest.
struct Suite {
    name: &'static str,
    /// libtest filter (empty: the whole suite).
    filter: &'static str,
    /// Runs in the first guest of the matrix only (unless `--full`).
    first_kernel_only: bool,
}

/// The CI subset: every kernel-half behaviour (load and attach every
/// program, tagging, redirect v4/v6 and inside a netns, exact byte counts,
/// close events, the QUIC refusal, restart with pinned maps) on every
/// kernel, and one end-to-end L7 transaction through an official SDK on
/// the first kernel. The transaction crosses the same programs the kernel
/// suite attaches on every kernel (tag, redirect, count); what it adds is
/// the userspace proxy, which does not change with the kernel — and a
/// second run of it costs CI's time budget 100 s of TCG guest.
const SUBSET: &[Suite] = &[
    Suite {
        name: "kernel",
        filter: "",
        first_kernel_only: false,
    },
    Suite {
        name: "l7",
        filter: "openai_sdk_through_egret_json_streams_rewrite_and_credentials",
        first_kernel_only: true,
    },
];

/// Tests of the subset that run on the first kernel of the matrix only:
/// the scale test (fifty sandboxes, a third of the kernel suite's time in
/// a TCG guest) exercises the same programs and map keys on every kernel;
/// the first kernel's verifier and the host's already run it, and CI's
/// time budget buys the second kernel the rest of the suite.
const FIRST_KERNEL_ONLY: &[&str] = &["fifty_sandboxes_with_identical_addresses_are_never_mixed_up"];

/// `--full`: every privileged suite that needs nothing outside the guest
/// (the ClickHouse suites and the manifest check run on the host only).
const FULL: &[Suite] = &[
    Suite {
        name: "kernel",
        filter: "",
        first_kernel_only: false,
    },
    Suite {
        name: "l7",
        filter: "",
        first_kernel_only: false,
    },
    Suite {
        name: "boundary",
        filter: "",
        first_kernel_only: false,
    },
    Suite {
        name: "adversarial",
        filter: "",
        first_kernel_only: false,
    },
    Suite {
        name: "registry",
        filter: "",
        first_kernel_only: false,
    },
    Suite {
        name: "proxy_protocol",
        filter: "",
        first_kernel_only: false,
    },
    Suite {
        name: "mock_provider",
        filter: "",
        first_kernel_only: false,
    },
];

fn vm_dir() -> PathBuf {
    target_dir().join("vm")
}

/// `cargo xtask vm-test`.
pub fn vm_test(kernels: &[String], full: bool) -> Result<()> {
    let series = select(kernels)?;
    crate::setup(false)?;
    apt_install(VM_APT_PACKAGES)?;
    let vng = install_virtme_ng()?;
    let apt = PrivateApt::new(&vm_dir().join("apt"))?;
    let suites = if full { FULL } else { SUBSET };
    let bins = build_test_binaries(suites)?;
    let mut report = String::new();
    let mut failed = Vec::new();
    for (n, s) in series.iter().enumerate() {
        let kernel = fetch_kernel(&apt, s)?;
        let skip = if full || n == 0 {
            &[][..]
        } else {
            FIRST_KERNEL_ONLY
        };
        let here: Vec<&Suite> = suites
            .iter()
            .filter(|s| full || n == 0 || !s.first_kernel_only)
            .collect();
        let results = run_in_guest(&vng, &kernel, &here, &bins, skip)?;
        for r in &results {
            let _ = writeln!(
                report,
                "| {} | {} | {} | {} | {} s |",
                kernel.release, r.suite, r.tests, r.summary, r.secs
            );
            if !r.ok {
                failed.push(format!("{} on {}", r.suite, kernel.release));
            }
        }
    }
    let table = format!(
        "| kernel | suite | tests | result | time in guest |\n|---|---|---|---|---|\n{report}"
    );
    fs::write(vm_dir().join("matrix.md"), &table)?;
    println!("\n{table}");
    if !failed.is_empty() {
        bail!(
            "vm-test failed: {} (logs under {})",
            failed.join(", "),
            vm_dir().join("out").display()
        );
    }
    Ok(())
}

/// The kernels CI boots when none is named: the LTS most managed fleets
/// run and the current Debian backport (5.10 only on request: it doubles
/// as the probe of what the oldest Debian LTS can do).
const DEFAULT: &[&str] = &["6.1", "6.12"];

fn select(kernels: &[String]) -> Result<Vec<&'static Series>> {
    if kernels.iter().any(|k| k == "all") {
        return Ok(SERIES.iter().collect());
    }
    if kernels.is_empty() {
        return Ok(SERIES
            .iter()
            .filter(|s| DEFAULT.contains(&s.name))
            .collect());
    }
    kernels
        .iter()
        .map(|k| {
            SERIES.iter().find(|s| s.name == k).with_context(|| {
                let names: Vec<_> = SERIES.iter().map(|s| s.name).collect();
                format!("unknown kernel {k:?} (known: {}, all)", names.join(", "))
            })
        })
        .collect()
}

/// virtme-ng in its own venv under target/vm (its pins are its own).
fn install_virtme_ng() -> Result<PathBuf> {
    let venv = vm_dir().join("venv");
    let vng = venv.join("bin/vng");
    if !vng.exists() {
        fs::create_dir_all(vm_dir())?;
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/python"))
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(VIRTME_NG))?;
    }
    Ok(vng)
}

/// apt with its own sources and lists: finds and downloads kernel packages
/// from bookworm, bookworm-security and bookworm-backports without adding
/// anything to the host's apt configuration.
struct PrivateApt {
    opts: Vec<String>,
}

impl PrivateApt {
    fn new(dir: &Path) -> Result<PrivateApt> {
        let lists = dir.join("lists");
        fs::create_dir_all(lists.join("partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let sources = dir.join("sources.list");
        let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let before = fs::read_to_string(&sources).unwrap_or_default();
        let wanted = format!(
                "deb [signed-by={key}] http://deb.debian.org/debian bookworm main\n\
                 deb [signed-by={key}] http://deb.debian.org/debian-security bookworm-security main\n\
                 deb [signed-by={key}] http://deb.debian.org/debian bookworm-backports main\n\
                 deb [signed-by={key}] http://deb.debian.org/debian bullseye main\n\
                 deb [signed-by={key}] http://deb.debian.org/debian-security bullseye-security main\n"
        );
        fs::write(&sources, &wanted)?;
        let apt = PrivateApt {
            opts: vec![
                format!("Dir::Etc::SourceList={}", sources.display()),
                "Dir::Etc::SourceParts=/dev/null".into(),
                format!("Dir::State::Lists={}", lists.display()),
                format!("Dir::Cache={}", dir.join("cache").display()),
                // Downloads land in target/, which apt's `_apt` user may not
                // write; root downloads them (no warning per package).
                "APT::Sandbox::User=root".into(),
            ],
        };
        let fresh = fs::read_dir(&lists)?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
        if !fresh || before != wanted {
            run(apt.cmd("apt-get").args(["update", "-q"]))?;
        }
        Ok(apt)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for o in &self.opts {
            c.arg("-o").arg(o);
        }
        c
    }
}

/// A kernel unpacked for virtme-ng.
struct Kernel {
    /// `uname -r` of the guest.
    release: String,
    vmlinuz: PathBuf,
}

/// The newest generic image of a series: downloaded, unpacked, and its
/// modules where virtme-ng looks for them (`/lib/modules/<release>`).
fn fetch_kernel(apt: &PrivateApt, s: &Series) -> Result<Kernel> {
    let list = output(apt.cmd("apt-cache").args([
        "search",
        "--names-only",
        &format!("^{}", s.prefix.replace('.', "\\.")),
    ]))?;
    let package = newest_package(&list, s)
        .with_context(|| format!("no {}*{} package found", s.prefix, s.suffix))?;
    let dir = vm_dir().join("kernels").join(&package);
    let boot = dir.join("boot");
    if !boot.exists() {
        let dl = vm_dir().join("kernels/debs");
        fs::create_dir_all(&dl)?;
        run(apt
            .cmd("apt-get")
            .current_dir(&dl)
            .args(["download", "-q", &package]))?;
        let deb = fs::read_dir(&dl)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("{package}: downloaded .deb not found in {}", dl.display()))?;
        let tmp = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&tmp);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        fs::rename(&tmp, &dir)?;
        fs::remove_file(&deb)?;
    }
    let vmlinuz = fs::read_dir(&boot)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz name")?
        .to_string();
    let host_modules = Path::new("/lib/modules").join(&release);
    if !host_modules.exists() {
        // A machine without kernel modules of its own (a container-like
        // VM) has no /lib/modules at all.
        fs::create_dir_all("/lib/modules")?;
        let ours = dir.join("lib/modules").join(&release);
        run(Command::new("cp").arg("-a").arg(&ours).arg(&host_modules))?;
    }
    Ok(Kernel { release, vmlinuz })
}

/// The highest-versioned generic (not cloud, not rt) image in
/// `apt-cache search` output.
fn newest_package(list: &str, s: &Series) -> Option<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(s.prefix) && n.ends_with(s.suffix))
        .filter(|n| !n.contains("-cloud-") && !n.contains("-rt-"))
        .max_by_key(|n| version_key(n))
        .map(str::to_string)
}

/// The numbers in a package name, in order: `linux-image-6.1.0-53-…` →
/// [6, 1, 0, 53].
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Builds the binaries the suites drive and returns each suite's test
/// executable.
fn build_test_binaries(suites: &[Suite]) -> Result<Vec<(&'static str, PathBuf)>> {
    crate::build_bins(&root(), false)?;
    let mut out = Vec::new();
    for s in suites {
        let json = output(Command::new("cargo").current_dir(root()).args([
            "test",
            "-p",
            "bpf-tests",
            "--test",
            s.name,
            "--no-run",
            "--message-format=json",
        ]))?;
        let exe = json
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"]["name"] == s.name)
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .with_context(|| format!("no test executable for suite {}", s.name))?;
        out.push((s.name, exe));
    }
    Ok(out)
}

struct SuiteResult {
    suite: &'static str,
    /// Which tests ran: the filter, "all", or "all but …".
    tests: String,
    ok: bool,
    summary: String,
    secs: u64,
}

/// Boots `kernel` once and runs every suite inside, one after another.
fn run_in_guest(
    vng: &Path,
    kernel: &Kernel,
    suites: &[&Suite],
    bins: &[(&'static str, PathBuf)],
    skip: &[&str],
) -> Result<Vec<SuiteResult>> {
    let out = vm_dir().join("out").join(&kernel.release);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let bpf_tests = root().join("bpf-tests");
    let bin = target_dir().join("debug");
    let kvm = has_hardware_virtualization();
    // Emulated (TCG) guests run several times slower than the host: the
    // rig's deadlines (waits for a condition) grow by this factor.
    let slowdown = if kvm { 2 } else { 6 };
    let mut script = format!(
        "set -u\n\
         mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
         uname -r > {out}/uname\n\
         export CI=true EGRET_BIN={bin}/egret MOCK_BIN={bin}/mock-provider EGRET_VENV={venv} EGRET_TEST_SLOWDOWN={slowdown}\n\
         cd {bpf_tests}\n",
        out = out.display(),
        bin = bin.display(),
        venv = venv_dir().display(),
        bpf_tests = bpf_tests.display(),
    );
    for s in suites {
        let exe = &bins.iter().find(|(n, _)| *n == s.name).expect("built").1;
        let _ = writeln!(
            script,
            "s=$(date +%s); {exe} --test-threads=1 {filter}{skips} > {out}/{name}.log 2>&1; \
             echo $? > {out}/{name}.rc; echo $(( $(date +%s) - s )) > {out}/{name}.secs",
            exe = exe.display(),
            filter = s.filter,
            skips = skip
                .iter()
                .map(|t| format!(" --skip {t}"))
                .collect::<String>(),
            out = out.display(),
            name = s.name,
        );
    }
    let script_path = out.join("run.sh");
    fs::write(&script_path, script)?;
    println!(
        "vm-test: booting {} ({}), suites: {}",
        kernel.release,
        if kvm {
            "KVM"
        } else {
            "TCG, no hardware virtualization"
        },
        suites.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
    );
    let started = Instant::now();
    let mut cmd = Command::new(vng);
    let path = format!(
        "{}:/usr/sbin:/sbin:{}",
        vng.parent().expect("venv bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path)
        .arg("--run")
        .arg(&kernel.vmlinuz)
        .args(["--memory", "3G", "--cpus", "2", "--rwdir"])
        .arg(&out)
        .arg("--exec")
        .arg(format!("sh {}", script_path.display()));
    if !kvm {
        cmd.arg("--disable-kvm");
    }
    let console = fs::File::create(out.join("console.log"))?;
    let st = cmd
        .stdout(console.try_clone()?)
        .stderr(console)
        .status()
        .context("running vng")?;
    println!(
        "vm-test: {} done in {} s (vng {st})",
        kernel.release,
        started.elapsed().as_secs()
    );
    let uname = fs::read_to_string(out.join("uname")).unwrap_or_default();
    if uname.trim() != kernel.release {
        bail!(
            "the guest did not run {} (uname: {:?}); console: {}",
            kernel.release,
            uname.trim(),
            out.join("console.log").display()
        );
    }
    let mut results = Vec::new();
    for s in suites {
        let rc = fs::read_to_string(out.join(format!("{}.rc", s.name))).unwrap_or_default();
        let secs = fs::read_to_string(out.join(format!("{}.secs", s.name)))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let log = fs::read_to_string(out.join(format!("{}.log", s.name))).unwrap_or_default();
        let summary = log
            .lines()
            .rev()
            .find(|l| l.starts_with("test result:"))
            .map(|l| {
                l.trim_start_matches("test result: ")
                    .split(';')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .unwrap_or_else(|| "no result (see log)".into());
        let ok = rc.trim() == "0";
        if !ok {
            for l in log
                .lines()
                .filter(|l| l.contains("FAILED") || l.contains("panicked"))
            {
                eprintln!("  {} {}: {l}", kernel.release, s.name);
            }
        }
        let tests = match (s.filter, skip.is_empty()) {
            ("", true) => "all".to_string(),
            ("", false) => format!("all but {}", skip.join(", ")),
            (f, _) => f.to_string(),
        };
        results.push(SuiteResult {
            suite: s.name,
            tests,
            ok,
            summary,
            secs,
        });
    }
    Ok(results)
}

/// `vmx` (Intel) or `svm` (AMD) in /proc/cpuinfo and a /dev/kvm to open.
fn has_hardware_virtualization() -> bool {
    let flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    cpu && Path::new("/dev/kvm").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_generic_image_of_each_series_is_chosen() {
        let list = "\
linux-image-6.1.0-47-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-53-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-rt-amd64-unsigned - Linux 6.1 PREEMPT_RT
linux-image-6.12.95+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.9+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.95+deb12-cloud-amd64-unsigned - Linux 6.12 cloud
linux-image-5.10.0-46-amd64-unsigned - Linux 5.10 for 64-bit PCs
linux-image-5.10.0-9-amd64-unsigned - Linux 5.10 for 64-bit PCs
";
        let series = |n| SERIES.iter().find(|s| s.name == n).unwrap();
        assert_eq!(
            newest_package(list, series("6.1")).as_deref(),
            Some("linux-image-6.1.0-53-amd64-unsigned")
        );
        assert_eq!(
            newest_package(list, series("6.12")).as_deref(),
            Some("linux-image-6.12.95+deb12-amd64-unsigned")
        );
        assert_eq!(
            newest_package(list, series("5.10")).as_deref(),
            Some("linux-image-5.10.0-46-amd64-unsigned")
        );
        assert_eq!(newest_package("", series("6.1")), None);
    }

    #[test]
    fn kernels_are_chosen_by_series_name() {
        let default: Vec<_> = select(&[]).unwrap().iter().map(|s| s.name).collect();
        assert_eq!(default, ["6.1", "6.12"]);
        assert_eq!(select(&["all".into()]).unwrap().len(), SERIES.len());
        let one = select(&["6.12".into()]).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "6.12");
        assert!(select(&["5.4".into()]).is_err());
    }
}
