//! Project tasks: `cargo xtask setup | build-ebpf | test | demo | fuzz | bench | tidy | vm-test | image`.
mod image;
mod tidy;
mod vm;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent): apt packages,
    /// nightly rust-src, bpf-linker built against the nightly's LLVM, a
    /// Python venv with the official provider SDKs.
    Setup {
        /// Skip apt packages.
        #[arg(long)]
        no_apt: bool,
    },
    /// Build the kernel half (nightly, build-std=core, bpf-linker).
    BuildEbpf,
    /// Check the rules the code keeps (layering, typed errors, fuzz hooks);
    /// also run by `cargo xtask test` as xtask's own tests.
    Tidy,
    /// Install what is missing (as `setup`), then run every test: unit,
    /// integration and privileged bpf-tests.
    Test {
        /// Extra arguments passed to `cargo test` after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install what is missing (as `setup`), build the release agent and run
    /// the first-run demo.
    Demo,
    /// Run the privileged suites on other kernels (Debian's 6.1 LTS and
    /// 6.12), each booted under QEMU with virtme-ng; installs what it needs.
    /// Default: the kernel suite and one end-to-end L7 transaction.
    VmTest {
        /// Kernel series to boot: 5.10, 6.1, 6.12 or all (default: 6.1
        /// and 6.12).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Every privileged suite that runs inside a guest, not the subset.
        #[arg(long)]
        full: bool,
    },
    /// Run the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer), each for
    /// a fixed time, from the checked-in seeds in `fuzz/corpus/<target>`
    /// plus the local working corpus `fuzz/target/corpus/<target>`.
    Fuzz {
        /// Seconds per target (libFuzzer `-max_total_time`).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Unoptimized build (`cargo fuzz --dev`, still with debug
        /// assertions and AddressSanitizer): builds in about half the CPU
        /// time, runs slower. The CI smoke uses it.
        #[arg(long)]
        dev: bool,
        /// Targets to run (default: all of `cargo fuzz list`).
        targets: Vec<String>,
    },
    /// Install what is missing (as `setup`, plus mitmproxy in its own venv),
    /// build release binaries and run the benchmarks against same-run
    /// baselines (egret-bench): a markdown table on stdout, merged into
    /// docs/benchmarks.md (`--quick`: next to the binaries instead).
    Bench {
        /// Which benches (default: all).
        #[arg(value_parser = ["proxy", "stream", "ebpf", "pipeline", "all"])]
        which: Vec<String>,
        /// Short runs (3 s, one round), no wait for a quiet machine, no
        /// mitmproxy install (its row is omitted if it is missing).
        #[arg(long)]
        quick: bool,
        /// Don't wait for the 1-minute load average to drop below 1.0.
        #[arg(long)]
        no_wait: bool,
    },
    /// Build the container image without a registry (debootstrap + buildah,
    /// release binary) as `egret:<version>`, and check `egret --version` and
    /// `egret config check` inside it (`buildah run`).
    Image {
        /// Rebuild the cached Debian root (target/image/) even if it is fresh.
        #[arg(long)]
        refresh: bool,
        /// Don't write target/image/egret-<version>.oci.tar.
        #[arg(long)]
        no_archive: bool,
    },
}

const APT_PACKAGES: &[&str] = &[
    "clickhouse-server",
    "clickhouse-client",
    // The ClickHouse cluster suite's coordinator (bpf-tests/tests/clickhouse_cluster.rs);
    // pulls in default-jre (OpenJDK 17), which it runs on.
    "zookeeper",
    // The Grafana dashboard's PromQL runs on it (bpf-tests/tests/dashboard.rs).
    "prometheus",
    "iproute2",
    "nftables",
    "iperf3",
    "wrk",
    "nghttp2-client",
    // The bench's capturing baselines (egret-bench proxy and pipeline):
    // nginx with an access log, HAProxy with httplog.
    "nginx",
    "haproxy",
    "bpftool",
    "curl",
    "python3-venv",
    "procps",
];

/// The SDK venv's packages: bpf-tests/clients/requirements.txt, the one
/// list (setup installs it with `pip install -r`).
const REQUIREMENTS: &str = "bpf-tests/clients/requirements.txt";

/// What setup imports to tell whether the venv has every requirement:
/// one module per requirement line, extras included (`openai[realtime]`
/// needs `websockets`, `anthropic[bedrock,vertex]` boto3 and google-auth).
/// A unit test keeps it in step with the requirements file.
const PY_IMPORTS: &[(&str, &[&str])] = &[
    ("openai[realtime]", &["openai", "websockets"]),
    (
        "anthropic[bedrock,vertex]",
        &["anthropic", "boto3", "google.auth"],
    ),
    ("google-genai", &["google.genai"]),
    ("mcp", &["mcp"]),
    ("boto3", &["boto3"]),
    ("ollama", &["ollama"]),
    ("grpcio", &["grpc"]),
    ("opentelemetry-proto", &["opentelemetry.proto"]),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("running {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn has(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn nightly() -> Command {
    let mut c = Command::new("rustup");
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// What `build-ebpf` needs; each missing piece with how to get it.
fn missing_prereqs() -> Vec<String> {
    let mut missing = Vec::new();
    if output(nightly().args(["run", "nightly", "rustc", "--version"])).is_err() {
        missing.push("the nightly toolchain: `rustup toolchain install nightly`".into());
    }
    let src =
        output(nightly().args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .unwrap_or_default();
    if !src.lines().any(|l| l.starts_with("rust-src")) {
        missing.push(
            "rust-src for nightly: `rustup component add rust-src --toolchain nightly`".into(),
        );
    }
    if !has("bpf-linker") {
        missing.push(
            "bpf-linker built against the nightly's LLVM: `cargo xtask setup --no-apt`".into(),
        );
    }
    missing
}

fn build_ebpf() -> Result<()> {
    let missing = missing_prereqs();
    if !missing.is_empty() {
        bail!(
            "cannot build the kernel half; missing:\n  - {}\n(or run `cargo xtask setup` for all of them)",
            missing.join("\n  - ")
        );
    }
    let root = root();
    run(Command::new("cargo")
        .current_dir(root.join("ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "build", "--release", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(root.join("target/ebpf")))?;
    println!(
        "kernel half: {}",
        root.join("target/ebpf/bpfel-unknown-none/release/egret")
            .display()
    );
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    if has("bpf-linker") {
        println!("bpf-linker: present");
        return Ok(());
    }
    // bpf-linker must link against the same LLVM as the nightly rustc.
    let sysroot = output(nightly().args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(&sysroot).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major: String = llvm
        .trim_start_matches("libLLVM.so.")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let prefix = env::temp_dir().join("egret-llvm-prefix");
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    }
    run(Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("LLVM_PREFIX", &prefix)
        .args(["+nightly", "install", "bpf-linker@0.13.0", "--locked"])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}")))
}

fn install_cargo_fuzz() -> Result<()> {
    if has("cargo-fuzz") {
        println!("cargo-fuzz: present");
        return Ok(());
    }
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

fn venv_dir() -> PathBuf {
    env::var_os("EGRET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv"))
}

/// Installs those of `packages` that are not installed (apt-get).
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        println!("apt packages: present ({})", packages.join(" "));
        return Ok(());
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

fn setup(no_apt: bool) -> Result<()> {
    if !no_apt {
        apt_install(APT_PACKAGES)?;
    }
    // Only touch rustup when something is missing: it goes to the network.
    if output(nightly().args(["run", "nightly", "rustc", "--version"])).is_err() {
        run(nightly().args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let installed =
        output(nightly().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(nightly().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    install_bpf_linker()?;
    install_cargo_fuzz()?;
    let venv = venv_dir();
    let py = venv.join("bin/python");
    if !py.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let imports: Vec<&str> = PY_IMPORTS
        .iter()
        .flat_map(|(_, m)| m.iter().copied())
        .collect();
    let have = Command::new(&py)
        .args(["-c", &format!("import {}", imports.join(", "))])
        // A fresh venv lacks them: that is what this probe finds out, not
        // an error to print.
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if have {
        println!("python SDKs: present in {}", venv.display());
    } else {
        run(Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(root().join(REQUIREMENTS)))?;
    }
    Ok(())
}

/// The binaries the tests, the demo and the benches drive: the agent, the
/// mock provider, the demo and bench drivers.
fn build_bins(root: &Path, release: bool) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).arg("build");
    if release {
        cmd.arg("--release");
    }
    run(cmd.args(["-p", "egret", "-p", "bpf-tests", "--bins"]))
}

fn test(args: &[String]) -> Result<()> {
    setup(false)?;
    let root = root();
    build_bins(&root, false)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("EGRET_BIN", target_dir().join("debug/egret"))
        .env("MOCK_BIN", target_dir().join("debug/mock-provider"))
        .env("EGRET_VENV", venv_dir());
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    run(&mut cmd)
}

fn demo() -> Result<()> {
    setup(false)?;
    let root = root();
    build_bins(&root, true)?;
    let rel = target_dir().join("release");
    run(Command::new(rel.join("egret-demo"))
        .env("EGRET_BIN", rel.join("egret"))
        .env("MOCK_BIN", rel.join("mock-provider"))
        .env("EGRET_VENV", venv_dir()))
}

/// libFuzzer options for every target: a per-input time limit (a slow
/// input is a finding, not a hang of the run) and the final statistics.
const FUZZ_ARGS: &[&str] = &["-timeout=30", "-rss_limit_mb=2048", "-print_final_stats=1"];

/// `cargo +nightly fuzz <sub>` in `fuzz/`, with the nightly that is
/// installed. Builds always go to `fuzz/target` (sanitizer flags: never
/// mixed with a `CARGO_TARGET_DIR` of normal builds).
fn cargo_fuzz(root: &Path, sub: &str) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root.join("fuzz"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .args(["+nightly", "fuzz", sub]);
    if sub != "list" {
        c.arg("--target-dir").arg(root.join("fuzz/target"));
    }
    c
}

/// What one target's run printed at the end.
#[derive(Default)]
struct FuzzStats {
    runs: Option<u64>,
    seconds: Option<u64>,
    /// Corpus entries at the end (seeds and working corpus).
    corpus: Option<u64>,
}

/// Runs `cmd`, echoing its stderr (libFuzzer's output) while scanning it
/// for the final statistics.
fn run_fuzz_target(cmd: &mut Command) -> Result<(bool, FuzzStats)> {
    use std::io::{BufRead, BufReader, Write};
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {shown}"))?;
    let mut stats = FuzzStats::default();
    let stderr = child.stderr.take().context("fuzz stderr")?;
    let mut out = std::io::stderr().lock();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        let _ = writeln!(out, "{line}");
        let num = |l: &str| l.split(':').next_back()?.trim().parse::<u64>().ok();
        if line.starts_with("stat::number_of_executed_units:") {
            stats.runs = num(&line);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 123456 runs in 10 second(s)"
            let mut w = rest.split_whitespace();
            stats.runs = stats.runs.or(w.next().and_then(|n| n.parse().ok()));
            stats.seconds = w.nth(2).and_then(|n| n.parse().ok());
        } else if matches!(line.split_whitespace().nth(1), Some("DONE" | "INITED")) {
            // "#123 DONE cov: 456 ft: 789 corp: 12/3456b ..."
            stats.corpus = line
                .split_whitespace()
                .skip_while(|w| *w != "corp:")
                .nth(1)
                .and_then(|c| c.split('/').next()?.parse().ok());
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {shown}"))?;
    Ok((status.success(), stats))
}

fn fuzz(seconds: u64, dev: bool, targets: &[String]) -> Result<()> {
    let root = root();
    if output(nightly().args(["run", "nightly", "rustc", "--version"])).is_err() {
        bail!("fuzzing needs the nightly toolchain: run `cargo xtask setup`");
    }
    install_cargo_fuzz()?;
    let all: Vec<String> = output(&mut cargo_fuzz(&root, "list"))?
        .lines()
        .map(str::to_owned)
        .collect();
    let targets: Vec<String> = if targets.is_empty() {
        all.clone()
    } else {
        for t in targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; targets: {}", all.join(", "));
            }
        }
        targets.to_vec()
    };
    // One build for every target, then the timed runs.
    let started = std::time::Instant::now();
    let profile: &[&str] = if dev { &["--dev"] } else { &[] };
    run(cargo_fuzz(&root, "build").args(profile))?;
    println!("fuzz: built in {:.0?}", started.elapsed());
    let mut report = Vec::new();
    let mut crashed = Vec::new();
    for t in &targets {
        let work = root.join("fuzz/target/corpus").join(t);
        let seeds = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all(&seeds)?;
        println!("fuzz: {t} for {seconds}s");
        let (ok, stats) = run_fuzz_target(
            cargo_fuzz(&root, "run")
                .args(profile)
                .arg(t)
                .arg(&work)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .args(FUZZ_ARGS),
        )?;
        if !ok {
            crashed.push(t.clone());
        }
        report.push((t.clone(), ok, stats));
    }
    println!(
        "\nfuzz summary ({seconds}s per target, built and run in {:.0?}):",
        started.elapsed()
    );
    println!(
        "{:<20} {:>8} {:>8} {:>12} {:>8}",
        "target", "result", "seconds", "executions", "corpus"
    );
    for (t, ok, s) in &report {
        let n = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        println!(
            "{:<20} {:>8} {:>8} {:>12} {:>8}",
            t,
            if *ok { "ok" } else { "FAILED" },
            n(s.seconds),
            n(s.runs),
            n(s.corpus)
        );
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/<target>/; see docs/fuzzing.md)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// mitmproxy's own venv (its pins clash with the provider SDKs').
fn mitm_venv() -> PathBuf {
    env::var_os("EGRET_MITM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-mitm"))
}

fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => root().join(p),
        None => root().join("target"),
    }
}

fn bench(which: &[String], quick: bool, no_wait: bool) -> Result<()> {
    setup(false)?;
    let venv = mitm_venv();
    if !quick && !venv.join("bin/mitmdump").exists() {
        if !venv.join("bin/python").exists() {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        }
        run(Command::new(venv.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "mitmproxy",
        ]))?;
    }
    let root = root();
    build_bins(&root, true)?;
    let rel = target_dir().join("release");
    let mut rev =
        output(
            Command::new("git")
                .current_dir(&root)
                .args(["rev-parse", "--short", "HEAD"]),
        )
        .unwrap_or_else(|_| "unknown".into());
    if output(Command::new("git").current_dir(&root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_ok_and(|s| !s.is_empty())
    {
        rev.push_str("+dirty");
    }
    let mut cmd = Command::new(rel.join("egret-bench"));
    cmd.arg("run")
        .args(which)
        .env("EGRET_BIN", rel.join("egret"))
        .env("MOCK_BIN", rel.join("mock-provider"))
        .env("EGRET_VENV", venv_dir())
        .env("EGRET_MITM_VENV", &venv)
        .env("EGRET_GIT_REV", rev);
    if quick {
        cmd.arg("--quick");
    }
    if no_wait {
        cmd.arg("--no-wait");
    }
    run(&mut cmd)
}

fn tidy_cmd() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let findings = tidy::check(&root).context("reading agent/src")?;
    for f in &findings {
        eprintln!("{f}");
    }
    if !findings.is_empty() {
        bail!("tidy: {} finding(s)", findings.len());
    }
    println!("tidy: the layering, error and fuzz-hook rules hold");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup { no_apt } => setup(no_apt),
        Cmd::BuildEbpf => build_ebpf(),
        Cmd::Tidy => tidy_cmd(),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => demo(),
        Cmd::VmTest { kernels, full } => vm::vm_test(&kernels, full),
        Cmd::Fuzz {
            seconds,
            dev,
            targets,
        } => fuzz(seconds, dev, &targets),
        Cmd::Bench {
            which,
            quick,
            no_wait,
        } => bench(&which, quick, no_wait),
        Cmd::Image {
            refresh,
            no_archive,
        } => image::image(&image::Options {
            refresh,
            no_archive,
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requirement lines of `text` (comments and blanks aside).
    fn requirement_lines(text: &str) -> Vec<&str> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// setup's import probe covers exactly the requirements file's lines.
    #[test]
    fn the_venv_probe_covers_every_requirement() {
        let text = std::fs::read_to_string(root().join(REQUIREMENTS)).unwrap();
        let lines = requirement_lines(&text);
        let probed: Vec<&str> = PY_IMPORTS.iter().map(|(r, _)| *r).collect();
        assert_eq!(lines, probed);
    }
}
