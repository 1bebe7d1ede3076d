//! egret-bench — the driver behind `cargo xtask bench`.
//!
//! `egret-bench run [proxy|stream|ebpf|pipeline|all] [--quick]` measures
//! egret against baselines taken in the same run (direct to the upstream,
//! nginx with an access log, HAProxy with httplog, mitmproxy; a sandbox
//! cgroup vs a sibling without programs), prints
//! markdown and merges it into `docs/benchmarks.md` (sections between
//! `<!-- bench:ID -->` markers, so a partial run updates only its own).
//!
//! Noise control: every comparison alternates baseline and subject within
//! the run (rotated order per round) and reports medians; the subject is
//! pinned to CPU 0 and the load generator (and the mock upstream) to CPU 1;
//! before a full run the driver waits for the 1-minute load average to drop
//! below 1.0 (polled every 30 s, at most 20 minutes) and says in the report
//! whether it did.
//!
//! The other subcommands are helpers the benches run inside sandboxes
//! (`sse-probe`, `connect-loop`, `idle-conns`).
mod ebpf;
mod helpers;
mod load;
mod peers;
mod pipeline;
mod profile;
mod proxy;
mod report;
mod stream;
mod util;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand, ValueEnum};

use crate::util::{loadavg, version_of, BenchResult, IoContext};

#[derive(Parser)]
#[command(
    name = "egret-bench",
    about = "egret benchmarks against same-run baselines"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Which {
    Proxy,
    Stream,
    Ebpf,
    Pipeline,
    All,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run benches and write the report.
    Run {
        /// Which benches (default: all).
        #[arg(value_enum)]
        which: Vec<Which>,
        /// Short runs (3 s, one round) for a smoke test; does not wait for a
        /// quiet machine and writes the report next to the binary instead of
        /// docs/benchmarks.md unless --out is given.
        #[arg(long)]
        quick: bool,
        /// Where to merge the markdown (default: <workspace>/docs/benchmarks.md).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Don't wait for the load average to drop before starting.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait for a quiet machine, in seconds.
        #[arg(long, default_value_t = 1200)]
        wait_max: u64,
    },
    /// Profile the agent under the proxy bench's load (callgrind or perf).
    Profile(profile::ProfileArgs),
    /// Start the mock and egret (pinned, one sandbox) for manual experiments;
    /// prints where everything is and holds until stdin closes.
    World,
    /// Helper: SSE time-to-first/last-event probe over one keep-alive TLS connection.
    SseProbe(helpers::SseProbeArgs),
    /// Helper: connect()/close() loop, prints connections per second.
    ConnectLoop(helpers::ConnectLoopArgs),
    /// Helper: opens N TLS connections, one request each, then holds them idle.
    IdleConns(helpers::IdleConnsArgs),
}

/// Durations and repetitions shared by the benches.
pub struct Params {
    pub quick: bool,
    /// Rounds of each interleaved comparison.
    pub rounds: usize,
    /// Seconds per throughput run.
    pub secs: u32,
    /// Seconds per fixed-rate latency run.
    pub lat_secs: u32,
}

impl Params {
    /// Quick or full; `EGRET_BENCH_ROUNDS` / `EGRET_BENCH_SECS` override
    /// (for iterating on a change, not for the report).
    fn new(quick: bool) -> Params {
        let mut p = Params::preset(quick);
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
        if let Some(r) = env("EGRET_BENCH_ROUNDS") {
            p.rounds = r.max(1) as usize;
        }
        if let Some(s) = env("EGRET_BENCH_SECS") {
            p.secs = s.max(1);
            p.lat_secs = s.max(1);
        }
        p
    }

    fn preset(quick: bool) -> Params {
        if quick {
            Params {
                quick,
                rounds: 1,
                secs: 3,
                lat_secs: 3,
            }
        } else {
            Params {
                quick,
                rounds: 3,
                secs: 10,
                lat_secs: 6,
            }
        }
    }
}

/// Waits for the 1-minute load average to fall below 1.0.
fn wait_quiet(max: Duration) -> String {
    let start = Instant::now();
    let first = loadavg();
    loop {
        let (l1, _, _) = loadavg();
        if l1 < 1.0 {
            return if start.elapsed() < Duration::from_secs(1) {
                format!("the 1-minute load average was {l1:.2} at the start (< 1.0)")
            } else {
                format!(
                    "waited {:.0} s for the 1-minute load average to drop from {:.2} to {l1:.2} (< 1.0)",
                    start.elapsed().as_secs_f64(),
                    first.0
                )
            };
        }
        if start.elapsed() >= max {
            return format!(
                "**the machine never quieted**: the 1-minute load average was still {l1:.2} \
                 after waiting {:.0} s (started at {:.2}); the run went ahead anyway, so \
                 absolute figures carry other builds' noise — the same-run ratios are \
                 the figures to read",
                start.elapsed().as_secs_f64(),
                first.0
            );
        }
        eprintln!(
            "egret-bench: load average {l1:.2} ≥ 1.0; waiting ({:.0} s so far)",
            start.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(30));
    }
}

fn machine(wait_note: &str, which: &[Which], quick: bool) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |k| k / 1024.0 / 1024.0);
    let egret = version_of(
        &bpf_tests::egret_bin().display().to_string(),
        &["--version"],
    );
    let rev = std::env::var("EGRET_GIT_REV").unwrap_or_else(|_| "unknown".into());
    let mitm = peers::mitmdump()
        .map(|p| version_of(&p.display().to_string(), &["--version"]))
        .unwrap_or_else(|| "not installed".into());
    let date = time::OffsetDateTime::now_utc();
    let l = loadavg();
    format!(
        "# egret benchmarks\n\n\
         Generated by `cargo xtask bench{}{}` (the `egret-bench` driver in \
         `bpf-tests/src/bin/egret-bench/`). Every figure is compared with a baseline \
         measured in the same run; read the ratios first.\n\n\
         | | |\n|---|---|\n\
         | date (UTC) | {} |\n\
         | CPU | {cpu} × {cores} cores |\n\
         | memory | {mem_gib:.1} GiB |\n\
         | kernel | {kernel} |\n\
         | egret | {egret} (git {rev}, release build) |\n\
         | nginx | {} |\n\
         | HAProxy | {} |\n\
         | mitmproxy | {} |\n\
         | wrk | {} |\n\
         | h2load | {} |\n\
         | iperf3 | {} |\n\
         | bpftool | {} |\n\
         | clickhouse-server | {} |\n\
         | load average at start | {:.2} {:.2} {:.2} |\n\n\
         **Noise.** This is a shared 2-core VM where other builds and tests run. Before \
         this run {wait_note}. Each comparison runs baseline and subject back to back in \
         rotated order, several rounds, and reports medians (individual runs are listed). \
         **Pinning**: the system under test (egret's agent — all threads —, nginx's master \
         and workers, HAProxy, mitmdump) is pinned to CPU {} with `taskset`; the load generators \
         (wrk, h2load, the probes, iperf3's client) and the mock upstream to CPU {}. \
         *Direct* therefore measures what the client and upstream can do on their core: the \
         ceiling every proxied row shares.\n{}",
        if quick { " --quick" } else { "" },
        if which.contains(&Which::All) {
            String::new()
        } else {
            format!(
                " {}",
                which
                    .iter()
                    .map(|w| format!("{w:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
        date.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        version_of("nginx", &["-v"]),
        version_of("haproxy", &["-v"]),
        mitm,
        version_of("wrk", &["-v"]),
        version_of("h2load", &["--version"]),
        version_of("iperf3", &["--version"]),
        version_of("bpftool", &["version"]),
        // Debian's 18.16 server has no --version: ask dpkg.
        version_of("dpkg-query", &["-W", "-f=${Version}", "clickhouse-server"]),
        l.0,
        l.1,
        l.2,
        util::SUBJECT_CPU,
        util::LOAD_CPU,
        match std::env::var_os("EGRET_BENCH_BASELINE_BIN") {
            Some(b) => format!(
                "\n**Before/after.** A second egret agent built from another revision \
                 (`EGRET_BENCH_BASELINE_BIN={}`), labelled *{}*, ran in the same rounds as \
                 the current build wherever a row names it.\n",
                b.to_string_lossy(),
                proxy::baseline_label()
            ),
            None => String::new(),
        },
    )
}

fn run(
    which: Vec<Which>,
    quick: bool,
    out: Option<PathBuf>,
    no_wait: bool,
    wait_max: u64,
) -> BenchResult<()> {
    if !nix::unistd::geteuid().is_root() {
        return util::err("egret-bench attaches kernel programs and makes cgroups: run it as root");
    }
    let which = if which.is_empty() {
        vec![Which::All]
    } else {
        which
    };
    let want = |w: Which| which.contains(&w) || which.contains(&Which::All);
    if std::env::var_os("EGRET_BIN").is_none() {
        // SAFETY (edition 2021: safe): single-threaded at this point.
        std::env::set_var("EGRET_BIN", peers::exe_dir().join("egret"));
    }
    util::raise_nofile();
    let p = Params::new(quick);
    let wait_note = if quick || no_wait {
        let l = loadavg();
        format!(
            "it did not wait for a quiet machine ({}; 1-minute load average {:.2})",
            if quick { "--quick" } else { "--no-wait" },
            l.0
        )
    } else {
        wait_quiet(Duration::from_secs(wait_max))
    };
    eprintln!("egret-bench: {wait_note}");
    let header = machine(&wait_note, &which, quick);
    let mut sections = Vec::new();
    let mut section =
        |name: &str, f: &dyn Fn(&Params) -> BenchResult<report::Section>| -> BenchResult<()> {
            eprintln!("egret-bench: {name}…");
            let l0 = loadavg();
            let t0 = Instant::now();
            let mut s = f(&p)?;
            let l1 = loadavg();
            s.body.push_str(&format!(
                "\n*Ran {:.0} s; 1-minute load average {:.2} before, {:.2} after.*\n",
                t0.elapsed().as_secs_f64(),
                l0.0,
                l1.0
            ));
            println!("{}", s.markdown());
            sections.push(s);
            Ok(())
        };
    if want(Which::Proxy) {
        section("proxy", &proxy::run)?;
    }
    if want(Which::Stream) {
        section("stream", &stream::run)?;
    }
    if want(Which::Ebpf) {
        section("ebpf", &ebpf::run)?;
    }
    if want(Which::Pipeline) {
        section("pipeline", &pipeline::run)?;
    }
    let out = out.unwrap_or_else(|| {
        if quick {
            peers::exe_dir().join("benchmarks-quick.md")
        } else {
            bpf_tests::workspace_root().join("docs/benchmarks.md")
        }
    });
    let old = std::fs::read_to_string(&out).unwrap_or_default();
    let doc = report::merge(&old, &header, &sections);
    std::fs::write(&out, doc).ctx(|| format!("write {}", out.display()))?;
    eprintln!("egret-bench: wrote {}", out.display());
    let missed: Vec<String> = sections
        .iter()
        .flat_map(|s| s.targets.iter())
        .filter(|t| !t.met)
        .map(|t| format!("{} ({} vs goal {})", t.name, t.measured, t.goal))
        .collect();
    if !missed.is_empty() {
        eprintln!("egret-bench: targets missed:\n  {}", missed.join("\n  "));
    }
    Ok(())
}

fn world() -> BenchResult<()> {
    if std::env::var_os("EGRET_BIN").is_none() {
        std::env::set_var("EGRET_BIN", peers::exe_dir().join("egret"));
    }
    util::raise_nofile();
    let dir = util::TempDir::new("egret-bench-world-")?;
    let payload = load::Payload::write(dir.path())?;
    let mock = peers::Mock::start(dir.path())?;
    let egret = peers::Egret::start(&mock, "", None)?;
    let hosts = peers::hosts_file(dir.path(), peers::MOCK_IP)?;
    println!(
        "{}",
        serde_json::json!({
            "agent_pid": egret.pid,
            "mock_pid": mock.proc.pid(),
            "sandbox": egret.sandbox.path,
            "hosts": hosts,
            "body": payload.body,
            "lua": payload.lua,
            "admin_port": egret.agent.admin_port,
            "agent_log": egret.agent.dir.join("agent.log"),
        })
    );
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
        line.clear();
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run {
            which,
            quick,
            out,
            no_wait,
            wait_max,
        } => run(which, quick, out, no_wait, wait_max),
        Cmd::Profile(a) => {
            if nix::unistd::geteuid().is_root() {
                util::raise_nofile();
                profile::profile(a)
            } else {
                util::err("egret-bench profile attaches kernel programs: run it as root")
            }
        }
        Cmd::World => world(),
        Cmd::SseProbe(a) => helpers::sse_probe(a),
        Cmd::ConnectLoop(a) => helpers::connect_loop(a),
        Cmd::IdleConns(a) => helpers::idle_conns(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
