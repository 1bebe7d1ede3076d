//! eBPF data-path bench: iperf3 TCP throughput and a connect()/close()
//! loop from a sandbox cgroup (every program attached, sandbox registered,
//! agent running) vs a sibling cgroup of the sandbox root (no programs),
//! alternating; then per-program run time from `kernel.bpf_stats_enabled`.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use bpf_tests::{sandboxed, SandboxCgroup};
use serde_json::Value;

use crate::{
    peers::{helper, Egret, Mock},
    report::{table, Section, Target},
    util::{
        cpu_seconds, err, fmt_num, median, wait_until, Acceptor, BenchError, BenchResult, Guarded,
        IoContext, TempDir, LOAD_CPU, SUBJECT_CPU,
    },
    Params,
};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Restores `kernel.bpf_stats_enabled` on drop.
struct StatsGuard(String);

impl StatsGuard {
    fn enable() -> BenchResult<StatsGuard> {
        let old = std::fs::read_to_string(STATS_SYSCTL)
            .ctx(|| format!("read {STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        std::fs::write(STATS_SYSCTL, "1").ctx(|| format!("write {STATS_SYSCTL}"))?;
        Ok(StatsGuard(old))
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.0);
    }
}

fn iperf(cg: &SandboxCgroup, port: u16, secs: u32) -> BenchResult<f64> {
    let out = sandboxed(cg, None, "iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-J",
            "-A",
            LOAD_CPU,
        ])
        .args(["-t", &secs.to_string()])
        .output()
        .ctx(|| "run iperf3".into())?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        BenchError::Msg(format!(
            "iperf3 output: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    if let Some(e) = v["error"].as_str() {
        return err(format!("iperf3: {e}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| BenchError::Msg("iperf3: no sum_received".into()))
}

fn connect_loop(cg: &SandboxCgroup, addr: SocketAddr, src: &str, count: u64) -> BenchResult<f64> {
    let out = helper(
        Some(cg),
        &[
            "connect-loop",
            "--addr",
            &addr.to_string(),
            "--src",
            src,
            "--count",
            &count.to_string(),
        ],
    )
    .output()
    .ctx(|| "run connect-loop".into())?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        BenchError::Msg(format!(
            "connect-loop output: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    if v["failed"].as_u64().unwrap_or(0) > 0 {
        return err(format!("connect-loop: {v}"));
    }
    Ok(v["rate"].as_f64().unwrap_or(0.0))
}

#[derive(Debug, Clone, Default)]
struct ProgStat {
    name: String,
    attach: String,
    run_ns: u64,
    runs: u64,
}

/// Programs attached at `cgroup` with their cumulative run time.
fn prog_stats(cgroup: &std::path::Path) -> BenchResult<BTreeMap<u64, ProgStat>> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .ctx(|| "bpftool cgroup show".into())?;
    let attached: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::Msg(format!("bpftool cgroup show: {e}")))?;
    let mut m = BTreeMap::new();
    for p in attached.as_array().into_iter().flatten() {
        let Some(id) = p["id"].as_u64() else { continue };
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()
            .ctx(|| "bpftool prog show".into())?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        m.insert(
            id,
            ProgStat {
                name: p["name"].as_str().unwrap_or("?").to_owned(),
                attach: p["attach_type"].as_str().unwrap_or("?").to_owned(),
                run_ns: v["run_time_ns"].as_u64().unwrap_or(0),
                runs: v["run_cnt"].as_u64().unwrap_or(0),
            },
        );
    }
    if m.is_empty() {
        return err(format!("no programs attached at {}", cgroup.display()));
    }
    Ok(m)
}

pub fn run(p: &Params) -> BenchResult<Section> {
    let dir = TempDir::new("egret-bench-ebpf-")?;
    let mock = Mock::start(dir.path())?;
    let egret = Egret::start(&mock, "", None)?;
    // EGRET_BENCH_BASELINE_BIN: a second agent from another build, its own
    // sandbox root, measured in the same rounds (before/after a change).
    let baseline = match std::env::var_os("EGRET_BENCH_BASELINE_BIN") {
        Some(b) => Some(Egret::start(&mock, "", Some(std::path::Path::new(&b)))?),
        None => None,
    };
    let ctl = SandboxCgroup {
        path: egret
            .agent
            .cgroup_mount
            .join(format!("{}-sibling", egret.agent.name)),
    };
    std::fs::create_dir_all(&ctl.path).ctx(|| "create sibling cgroup".into())?;
    // A port below the ephemeral range: the connect loops leave thousands
    // of TIME_WAIT sockets on ephemeral ports, which a wildcard bind trips on.
    let (_server, port) = {
        let mut started = None;
        for attempt in 0..20u16 {
            let port = 20_000 + (std::process::id() as u16 % 5_000) + attempt * 211;
            let child = Command::new("iperf3")
                .args([
                    "-s",
                    "-B",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-A",
                    SUBJECT_CPU,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ctx(|| "start iperf3 -s".into())?;
            let mut g = Guarded {
                child,
                name: "iperf3".into(),
            };
            let up = wait_until("iperf3 server", Duration::from_secs(5), || {
                !g.alive() || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up.is_ok() && g.alive() {
                started = Some((g, port));
                break;
            }
        }
        started.ok_or_else(|| BenchError::Msg("iperf3 -s would not start".into()))?
    };
    std::thread::sleep(Duration::from_millis(200));
    let acceptor = Acceptor::start()?;
    let (rounds, secs, count) = if p.quick {
        (2, 2, 5_000u64)
    } else {
        (5, 5, 20_000u64)
    };

    // 0: sandbox, 1: sibling, 2: sandbox of the baseline build's agent.
    let mut cgs: Vec<(String, &SandboxCgroup)> =
        vec![("sandbox".into(), &egret.sandbox), ("sibling".into(), &ctl)];
    if let Some(b) = &baseline {
        cgs.push((
            format!("sandbox of {}", crate::proxy::baseline_label()),
            &b.sandbox,
        ));
    }
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); cgs.len()];
    let mut cps: Vec<Vec<f64>> = vec![Vec::new(); cgs.len()];
    let mut agent_cpu_per_conn = Vec::new();
    let flows0 = egret.status()["records"]["flows"].as_u64().unwrap_or(0);
    let mut sandbox_conns = 0u64;
    // Source addresses unique to this process, fresh per run.
    let net = 1 + std::process::id() % 200;
    let idx: Vec<usize> = (0..cgs.len()).collect();
    for r in 0..rounds {
        let order: Vec<usize> = (0..idx.len()).map(|k| idx[(k + r) % idx.len()]).collect();
        for &i in &order {
            let g = iperf(cgs[i].1, port, secs)?;
            eprintln!("  ebpf iperf3 {} round {}: {g:.2} Gbit/s", cgs[i].0, r + 1);
            gbps[i].push(g);
        }
        for &i in &order {
            let src = format!("127.{net}.{}.{}", r + 1, i + 1);
            let cpu0 = cpu_seconds(egret.pid);
            let rate = connect_loop(cgs[i].1, acceptor.addr, &src, count)?;
            if i == 0 {
                sandbox_conns += count;
                agent_cpu_per_conn.push((cpu_seconds(egret.pid) - cpu0) / count as f64 * 1e6);
            }
            eprintln!(
                "  ebpf connect {} round {}: {rate:.0} conn/s",
                cgs[i].0,
                r + 1
            );
            cps[i].push(rate);
        }
    }
    // Every sandbox connection becomes a flow record (iperf3 adds two per run).
    let want_flows = sandbox_conns + 2 * rounds as u64;
    let _ = wait_until("flow records", Duration::from_secs(30), || {
        egret.status()["records"]["flows"].as_u64().unwrap_or(0) - flows0 >= want_flows
    });
    let st = egret.status();
    let flows = st["records"]["flows"].as_u64().unwrap_or(0) - flows0;
    let kernel_drops: u64 = st["kernel"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.contains("drop") || k.contains("fail") || k.contains("miss"))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0);

    // Per-program cost (stats on only for this phase: they cost a little).
    let root = egret.agent.sandbox_root.clone();
    let (stats, stat_conns, stat_secs) = {
        let _guard = StatsGuard::enable()?;
        let before = prog_stats(&root)?;
        let stat_secs = secs;
        let stat_conns = count;
        iperf(&egret.sandbox, port, stat_secs)?;
        connect_loop(
            &egret.sandbox,
            acceptor.addr,
            &format!("127.{net}.250.1"),
            stat_conns,
        )?;
        let after = prog_stats(&root)?;
        let stats: Vec<ProgStat> = after
            .iter()
            .map(|(id, a)| {
                let b = before.get(id).cloned().unwrap_or_default();
                ProgStat {
                    name: a.name.clone(),
                    attach: a.attach.clone(),
                    run_ns: a.run_ns - b.run_ns,
                    runs: a.runs - b.runs,
                }
            })
            .collect();
        (stats, stat_conns, stat_secs)
    };
    let restored = std::fs::read_to_string(STATS_SYSCTL).unwrap_or_default();

    let g: Vec<f64> = gbps.iter().map(|v| median(v)).collect();
    let c: Vec<f64> = cps.iter().map(|v| median(v)).collect();
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| fmt_num(*x))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut body = format!(
        "Same agent running throughout (capture port 443, the bench's sandbox registered). \
         *Sandbox*: a registered sandbox cgroup under the sandbox root, where egret's programs \
         apply (connect4/6 tagging, sock_ops link + close events, cgroup_skb byte/segment \
         counting; the destination port is not a captured one, so nothing is redirected — \
         this is the cost every sandbox socket pays). *Sibling*: a cgroup next to the sandbox \
         root, no programs. They alternate (rotated order), {rounds} rounds. iperf3: one TCP \
         stream over loopback for {secs} s (`-A {LOAD_CPU}` client, server `-A {SUBJECT_CPU}`); \
         connect loop: `egret-bench connect-loop` (pinned to CPU {LOAD_CPU}) opens and closes \
         {count} connections to a local acceptor (backlog 4096, CPU {SUBJECT_CPU}), each run \
         from its own source address.\n\n"
    );
    let mut rows = Vec::new();
    for (k, name) in ["iperf3 TCP, Gbit/s", "connect()+close(), per s"]
        .iter()
        .enumerate()
    {
        let (m, all) = if k == 0 { (&g, &gbps) } else { (&c, &cps) };
        let fmt = |x: f64| {
            if k == 0 {
                format!("{x:.2}")
            } else {
                fmt_num(x)
            }
        };
        let mut row = vec![
            name.to_string(),
            fmt(m[0]),
            fmt(m[1]),
            format!("{:.3}×", m[0] / m[1]),
            runs(&all[0]),
            runs(&all[1]),
        ];
        if m.len() > 2 {
            row.push(format!("{} ({:.3}×)", fmt(m[2]), m[2] / m[1]));
        }
        rows.push(row);
    }
    let base_col = format!("sandbox of {} (ratio)", crate::proxy::baseline_label());
    let mut header = vec![
        "test",
        "sandbox (programs)",
        "sibling (none)",
        "ratio",
        "sandbox runs",
        "sibling runs",
    ];
    if baseline.is_some() {
        header.push(&base_col);
    }
    body.push_str(&table(&header, &rows));
    body.push_str(&format!(
        "\nEvery sandbox connection became a flow record: {flows} flows recorded for {want_flows} \
         sandbox connections (including iperf3's control and data connections); kernel-side \
         drop/miss counters: {kernel_drops}. The agent spent a median {:.1} µs of CPU per \
         sandbox connection (close event → flow record → spool).\n\n",
        median(&agent_cpu_per_conn)
    ));
    body.push_str(&format!(
        "**Per-program cost** — `kernel.bpf_stats_enabled=1` for one more sandbox run \
         ({stat_secs} s of iperf3, then {stat_conns} connections), `bpftool prog show` \
         `run_time_ns`/`run_cnt` deltas for the programs attached at the sandbox root; the \
         sysctl was restored to {} afterwards.\n\n",
        restored.trim()
    ));
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                format!("`{}`", s.name),
                s.attach.clone(),
                s.runs.to_string(),
                if s.runs > 0 {
                    format!("{:.0}", s.run_ns as f64 / s.runs as f64)
                } else {
                    "—".into()
                },
                format!("{:.2}", s.run_ns as f64 / 1e6),
            ]
        })
        .collect();
    body.push_str(&table(
        &["program", "attach type", "runs", "ns per run", "total ms"],
        &rows,
    ));
    let total_ns: u64 = stats.iter().map(|s| s.run_ns).sum();
    body.push_str(&format!(
        "\nAll programs together: {:.2} ms of kernel time for the {stat_secs} s iperf3 run and \
         {stat_conns} connections.\n",
        total_ns as f64 / 1e6
    ));
    drop(acceptor);
    drop(cgs);
    drop(ctl);
    drop(baseline);
    drop(egret);
    drop(mock);
    Ok(Section {
        id: "ebpf",
        title: "eBPF data path: sandbox cgroup vs sibling without programs".into(),
        body,
        targets: vec![
            Target::at_least(
                "iperf3 throughput, sandbox ÷ sibling",
                g[0] / g[1],
                0.98,
                "×",
            ),
            Target::at_least(
                "connect()/close() rate, sandbox ÷ sibling",
                c[0] / c[1],
                0.95,
                "×",
            ),
        ],
    })
}
