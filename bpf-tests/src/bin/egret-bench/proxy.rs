//! Proxy bench: HTTPS 1 KiB JSON request/response over keep-alive, direct
//! to the mock upstream vs through egret (full capture, kernel redirect),
//! nginx (access log), HAProxy (httplog) and mitmproxy. Every round runs
//! every subject back to back, in a rotated order, so background noise hits
//! them alike. What each subject wrote per request (egret's records, the
//! baselines' log lines) is counted against the requests completed.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use bpf_tests::SandboxCgroup;

use crate::{
    load::{self, LoadResult, Payload},
    peers::{self, client, hosts_file, logged_requests, Egret, Haproxy, Mitm, Mock, Nginx},
    report::{table, Section, Target},
    util::{
        cpu_seconds, err, fmt_num, median, percentile, rss_kib, wait_until, BenchResult, TempDir,
    },
    Params,
};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Who {
    Direct,
    Egret,
    /// The same agent from another build (`EGRET_BENCH_BASELINE_BIN`), for
    /// before/after comparisons of a change in one run.
    EgretBaseline,
    Nginx,
    Haproxy,
    Mitm,
}

impl Who {
    fn name(self) -> String {
        match self {
            Who::Direct => "direct (limit)".into(),
            Who::Egret => "egret (full capture)".into(),
            Who::EgretBaseline => baseline_label(),
            Who::Nginx => "nginx (access log)".into(),
            Who::Haproxy => "HAProxy (httplog)".into(),
            Who::Mitm => "mitmproxy".into(),
        }
    }

    /// What the subject does for each request, for the report's table:
    /// (client side, upstream side, work and record per request).
    fn per_request(self) -> [&'static str; 3] {
        match self {
            Who::Direct => [
                "the client's TLS goes straight to the mock",
                "—",
                "nothing: the ceiling every proxied row shares",
            ],
            Who::Egret | Who::EgretBaseline => [
                "terminated (kernel redirect from the sandbox cgroup); HTTP/1.1 or HTTP/2",
                "TLS, certificate verified, keep-alive pool",
                "parses the OpenAI request and response bodies, builds a transaction record \
                 with both bodies (capture up to 64 KiB), policy and trace context, appends it \
                 to the spool (binary frames, CRC-checked, `fdatasync`'d in batches)",
            ],
            Who::Nginx => [
                "terminated (`listen … ssl http2`); HTTP/1.1 or HTTP/2",
                "`proxy_pass` over TLS, certificate verified (`proxy_ssl_verify on`), \
                 keep-alive pool (`keepalive 256`)",
                "one access-log line (`access_log` to a file, `combined` format, no \
                 `buffer=`: one `write` per request)",
            ],
            Who::Haproxy => [
                "terminated (`bind … ssl alpn h2,http/1.1`); HTTP/1.1 or HTTP/2",
                "TLS, certificate verified (`verify required`, `verifyhost`), idle \
                 connections shared (`http-reuse always`)",
                "one `option httplog` line (`log stdout format raw`, stdout a file: one \
                 `writev` per request)",
            ],
            Who::Mitm => [
                "terminated (`--mode reverse:`); HTTP/1.1 or HTTP/2",
                "TLS, certificate verified (`ssl_verify_upstream_trusted_ca`)",
                "parses the flow in Python; no log line (`-q`, `flow_detail=0`)",
            ],
        }
    }

    /// The worker layout, for the report's table.
    fn workers(self) -> &'static str {
        match self {
            Who::Direct => "—",
            Who::Egret | Who::EgretBaseline => "one runtime worker thread + the recorder thread",
            Who::Nginx => "`worker_processes 1` (+ master)",
            Who::Haproxy => "`nbthread 1`, one process (`-db`)",
            Who::Mitm => "one Python process",
        }
    }
}

/// How the baseline build's rows are labelled (`EGRET_BENCH_BASELINE_LABEL`).
pub fn baseline_label() -> String {
    std::env::var("EGRET_BENCH_BASELINE_LABEL").unwrap_or_else(|_| "egret, baseline build".into())
}

struct Subject<'a> {
    who: Who,
    hosts: PathBuf,
    sandbox: Option<&'a SandboxCgroup>,
    /// The proxy process (None for direct).
    pid: Option<u32>,
    /// The request log a baseline writes (nginx, HAProxy).
    log: Option<PathBuf>,
}

#[derive(Default)]
struct Runs {
    load: Vec<LoadResult>,
    /// Proxy CPU seconds per run.
    cpu: Vec<f64>,
    /// Latency samples (ms) and achieved rates of the fixed-rate runs.
    lat: Vec<f64>,
    lat_rps: Vec<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
        }
    }
}

pub const WRK_CONNS: u32 = 16;
pub const H2_CONNS: u32 = 16;
pub const H2_STREAMS: u32 = 10;
pub const LAT_CLIENTS: u32 = 4;
pub const LAT_RPS_EACH: u32 = 250;

/// Requests of each count-bound check run (records written = requests
/// completed).
const CHECK_REQUESTS: u64 = 20_000;

/// `count()` once it has held still for 1 s (at most `bound`).
fn settled(count: &dyn Fn() -> u64, bound: Duration) -> u64 {
    let deadline = Instant::now() + bound;
    let mut last = count();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let n = count();
        if n != last {
            last = n;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    last
}

/// Rotates `v` left by `r`.
fn rotated<T: Copy>(v: &[T], r: usize) -> Vec<T> {
    let n = v.len();
    (0..n).map(|i| v[(i + r) % n]).collect()
}

fn sanity_check(s: &Subject, payload: &Payload) -> BenchResult<()> {
    let mut cmd = client(s.sandbox, &s.hosts, "curl");
    cmd.args([
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ])
    .args(["-H", "content-type: application/json"])
    .args([
        "-H",
        &format!("x-mock-output-tokens: {}", load::OUTPUT_WORDS),
    ])
    .arg("--data-binary")
    .arg(format!("@{}", payload.body.display()))
    .arg(load::url())
    .stderr(Stdio::piped());
    let out = cmd
        .output()
        .map_err(|e| crate::util::BenchError::Msg(format!("curl through {}: {e}", s.who.name())))?;
    let code = String::from_utf8_lossy(&out.stdout);
    if code != "200" {
        return err(format!(
            "sanity request through {} answered {code:?}: {}",
            s.who.name(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Waits until the log at `path` has `n` request lines (the sanity
/// request): a baseline that does not log every request is not the
/// baseline the report describes.
fn wait_logged(who: Who, path: &Path, n: u64) -> BenchResult<u64> {
    let mut have = 0;
    let r = wait_until(
        &format!("{}'s log line for the sanity request", who.name()),
        Duration::from_secs(10),
        || {
            have = logged_requests(path, load::PATH);
            have >= n
        },
    );
    if r.is_err() || have != n {
        return err(format!(
            "{} logged {have} request lines in {} for {n} request(s)",
            who.name(),
            path.display()
        ));
    }
    Ok(have)
}

pub fn run(p: &Params) -> BenchResult<Section> {
    let dir = TempDir::new("egret-bench-proxy-")?;
    let payload = Payload::write(dir.path())?;
    let mock = Mock::start(dir.path())?;
    let egret = Egret::start(&mock, "", None)?;
    let baseline_bin = std::env::var_os("EGRET_BENCH_BASELINE_BIN").map(PathBuf::from);
    let baseline = match &baseline_bin {
        Some(b) => Some(Egret::start(&mock, "", Some(b))?),
        None => None,
    };
    // EGRET_BENCH_NO_PEERS: egret vs direct (and the baseline build) only,
    // for quick before/after iterations on a change.
    let peers_on = std::env::var_os("EGRET_BENCH_NO_PEERS").is_none();
    let nginx = if peers_on {
        Some(Nginx::start(&mock)?)
    } else {
        None
    };
    let haproxy = if peers_on {
        Some(Haproxy::start(&mock)?)
    } else {
        None
    };
    let mitm = if peers_on { Mitm::start(&mock)? } else { None };
    let mut subjects = vec![
        Subject {
            who: Who::Direct,
            hosts: hosts_file(dir.path(), peers::MOCK_IP)?,
            sandbox: None,
            pid: None,
            log: None,
        },
        Subject {
            who: Who::Egret,
            hosts: hosts_file(dir.path(), peers::MOCK_IP)?,
            sandbox: Some(&egret.sandbox),
            pid: Some(egret.pid),
            log: None,
        },
    ];
    if let Some(n) = &nginx {
        subjects.push(Subject {
            who: Who::Nginx,
            hosts: hosts_file(dir.path(), peers::NGINX_IP)?,
            sandbox: None,
            pid: Some(n.proc.pid()),
            log: Some(n.log.clone()),
        });
    }
    if let Some(h) = &haproxy {
        subjects.push(Subject {
            who: Who::Haproxy,
            hosts: hosts_file(dir.path(), peers::HAPROXY_IP)?,
            sandbox: None,
            pid: Some(h.proc.pid()),
            log: Some(h.log.clone()),
        });
    }
    if let Some(b) = &baseline {
        subjects.push(Subject {
            who: Who::EgretBaseline,
            hosts: hosts_file(dir.path(), peers::MOCK_IP)?,
            sandbox: Some(&b.sandbox),
            pid: Some(b.pid),
            log: None,
        });
    }
    if let Some(m) = &mitm {
        subjects.push(Subject {
            who: Who::Mitm,
            hosts: hosts_file(dir.path(), peers::MITM_IP)?,
            sandbox: None,
            pid: Some(m.proc.pid()),
            log: None,
        });
    }
    // Every baseline logs the sanity request.
    for s in &subjects {
        sanity_check(s, &payload)?;
        if let Some(log) = &s.log {
            wait_logged(s.who, log, 1)?;
        }
    }

    let mut runs: BTreeMap<(Proto, Who), Runs> = BTreeMap::new();
    let idx: Vec<usize> = (0..subjects.len()).collect();
    let log = dir.join("h2load.log");
    for proto in [Proto::H1, Proto::H2] {
        for round in 0..p.rounds {
            for i in rotated(&idx, round) {
                let s = &subjects[i];
                let cpu0 = s.pid.map(cpu_seconds);
                let r = match proto {
                    Proto::H1 => load::wrk(s.sandbox, &s.hosts, &payload, WRK_CONNS, p.secs)?,
                    Proto::H2 => {
                        load::h2load(s.sandbox, &s.hosts, &payload, H2_CONNS, H2_STREAMS, p.secs)?
                    }
                };
                let cpu = s.pid.map(|pid| cpu_seconds(pid) - cpu0.unwrap_or(0.0));
                eprintln!(
                    "  proxy {} {:<22} round {}: {:>9.0} req/s{}",
                    proto.name(),
                    s.who.name(),
                    round + 1,
                    r.rps,
                    cpu.map(|c| format!(", proxy CPU {c:.2} s"))
                        .unwrap_or_default()
                );
                let e = runs.entry((proto, s.who)).or_default();
                e.load.push(r);
                if let Some(c) = cpu {
                    e.cpu.push(c);
                }
            }
        }
    }
    for proto in [Proto::H1, Proto::H2] {
        for round in 0..p.rounds {
            for i in rotated(&idx, round) {
                let s = &subjects[i];
                let (r, samples) = load::h2load_latency(
                    s.sandbox,
                    &s.hosts,
                    &payload,
                    &load::FixedRate {
                        h1: proto == Proto::H1,
                        clients: LAT_CLIENTS,
                        rps_each: LAT_RPS_EACH,
                        secs: p.lat_secs,
                    },
                    &log,
                )?;
                eprintln!(
                    "  latency {} {:<22} round {}: p50 {:.3} ms p99 {:.3} ms at {:.0} req/s",
                    proto.name(),
                    s.who.name(),
                    round + 1,
                    percentile(&samples, 50.0),
                    percentile(&samples, 99.0),
                    r.rps
                );
                let e = runs.entry((proto, s.who)).or_default();
                e.lat.extend(samples);
                e.lat_rps.push(r.rps);
            }
        }
    }
    let rss: BTreeMap<Who, u64> = subjects
        .iter()
        .filter_map(|s| Some((s.who, rss_kib(s.pid?))))
        .collect();

    // Tables.
    let mut tput_rows = Vec::new();
    let mut lat_rows = Vec::new();
    let mut targets = Vec::new();
    let per_core = |r: &Runs| -> f64 {
        let reqs: f64 = r.load.iter().map(|l| l.requests as f64).sum();
        let cpu: f64 = r.cpu.iter().sum();
        if cpu > 0.0 {
            reqs / cpu
        } else {
            f64::NAN
        }
    };
    let rps = |r: &Runs| median(&r.load.iter().map(|l| l.rps).collect::<Vec<_>>());
    for proto in [Proto::H1, Proto::H2] {
        let direct = &runs[&(proto, Who::Direct)];
        let d_rps = rps(direct);
        let d50 = percentile(&direct.lat, 50.0);
        let d99 = percentile(&direct.lat, 99.0);
        for s in &subjects {
            let r = &runs[&(proto, s.who)];
            let m = rps(r);
            let pc = per_core(r);
            let errors: u64 = r.load.iter().map(|l| l.errors).sum();
            tput_rows.push(vec![
                proto.name().into(),
                s.who.name(),
                fmt_num(m),
                r.load
                    .iter()
                    .map(|l| fmt_num(l.rps))
                    .collect::<Vec<_>>()
                    .join(" / "),
                format!("{:.3}×", m / d_rps),
                if pc.is_nan() {
                    "—".into()
                } else {
                    format!("{:.3}", 1000.0 / pc)
                },
                if pc.is_nan() {
                    "—".into()
                } else {
                    fmt_num(pc)
                },
                errors.to_string(),
            ]);
            let p50 = percentile(&r.lat, 50.0);
            let p90 = percentile(&r.lat, 90.0);
            let p99 = percentile(&r.lat, 99.0);
            let added = |x: f64, d: f64| {
                if s.who == Who::Direct {
                    "—".to_owned()
                } else {
                    format!("{:+.3}", x - d)
                }
            };
            lat_rows.push(vec![
                proto.name().into(),
                s.who.name(),
                (LAT_CLIENTS * LAT_RPS_EACH).to_string(),
                fmt_num(median(&r.lat_rps)),
                format!("{p50:.3}"),
                format!("{p90:.3}"),
                format!("{p99:.3}"),
                added(p50, d50),
                added(p99, d99),
            ]);
        }
        let e = &runs[&(proto, Who::Egret)];
        if let Some(n) = runs.get(&(proto, Who::Nginx)) {
            targets.push(Target::at_least(
                &format!(
                    "{}: egret req/s per core ÷ nginx req/s per core",
                    proto.name()
                ),
                per_core(e) / per_core(n),
                1.0,
                "×",
            ));
        }
        targets.push(Target::at_most(
            &format!(
                "{}: egret added p50 at {} req/s",
                proto.name(),
                LAT_CLIENTS * LAT_RPS_EACH
            ),
            percentile(&e.lat, 50.0) - d50,
            0.1,
            " ms",
        ));
        targets.push(Target::at_most(
            &format!(
                "{}: egret added p99 at {} req/s",
                proto.name(),
                LAT_CLIENTS * LAT_RPS_EACH
            ),
            percentile(&e.lat, 99.0) - d99,
            0.5,
            " ms",
        ));
        if let Some(mr) = runs.get(&(proto, Who::Mitm)) {
            targets.push(Target::at_least(
                &format!("{}: egret req/s ÷ mitmproxy req/s", proto.name()),
                rps(e) / rps(mr),
                50.0,
                "×",
            ));
        }
    }

    // Per-core comparison with the capturing baselines, in words.
    let mut per_core_notes = Vec::new();
    for proto in [Proto::H1, Proto::H2] {
        let e = per_core(&runs[&(proto, Who::Egret)]);
        let vs: Vec<String> = [Who::Nginx, Who::Haproxy]
            .into_iter()
            .filter_map(|w| {
                let b = per_core(runs.get(&(proto, w))?);
                Some(format!("{} {:.2}×", w.name(), e / b))
            })
            .collect();
        if !vs.is_empty() {
            per_core_notes.push(format!("{} — {}", proto.name(), vs.join(", ")));
        }
    }

    // What each subject wrote per request, exactly. The timed runs stop
    // with requests in flight (served and written, not counted by the
    // tools), so the check has runs of its own: per capturing subject and
    // protocol, one count-bound h2load run in which every request
    // completes; the records (egret: the spool's counter, after the
    // fsync'd append) or log lines written during it must equal the
    // requests completed.
    let recs = |v: &serde_json::Value, k: &str| v["records"][k].as_u64().unwrap_or(0);
    let check_count = if p.quick { 1_000 } else { CHECK_REQUESTS };
    let mut check_rows = Vec::new();
    let mut dropped = 0;
    for s in &subjects {
        let agent = match s.who {
            Who::Egret => Some(&egret),
            Who::EgretBaseline => baseline.as_ref(),
            _ => None,
        };
        let (what, written): (&str, Box<dyn Fn() -> u64>) = match (agent, &s.log) {
            (Some(a), _) => (
                "transaction records in the spool",
                Box::new(move || recs(&a.status(), "transactions")),
            ),
            (None, Some(log)) => (
                if s.who == Who::Nginx {
                    "access-log lines"
                } else {
                    "httplog lines"
                },
                Box::new(move || logged_requests(log, load::PATH)),
            ),
            (None, None) => continue,
        };
        for proto in [Proto::H1, Proto::H2] {
            // Whatever the timed runs left on its way has landed: the count
            // holds still for 1 s (bounded).
            let before = settled(&written, Duration::from_secs(30));
            let streams = if proto == Proto::H1 { 1 } else { H2_STREAMS };
            let conns = if proto == Proto::H1 {
                WRK_CONNS
            } else {
                H2_CONNS
            };
            let r = load::h2load_count(
                s.sandbox,
                &s.hosts,
                &payload,
                proto == Proto::H1,
                conns,
                streams,
                check_count,
            )?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while written().saturating_sub(before) < r.requests && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // And nothing more comes after: the count settles.
            let n = settled(&written, Duration::from_secs(30)).saturating_sub(before);
            eprintln!(
                "  check {} {:<22}: {} completed, {} errors, {n} {what}",
                proto.name(),
                s.who.name(),
                r.requests,
                r.errors
            );
            let t = Target::exact(
                &format!(
                    "{} {}: {what} = requests completed ({check_count}-request run)",
                    proto.name(),
                    s.who.name()
                ),
                n,
                r.requests,
            );
            check_rows.push(vec![
                proto.name().into(),
                s.who.name(),
                what.to_owned(),
                r.requests.to_string(),
                r.errors.to_string(),
                n.to_string(),
                if t.met && r.errors == 0 { "✅" } else { "❌" }.to_owned(),
            ]);
            targets.push(t);
            if r.errors > 0 {
                targets.push(Target::exact(
                    &format!("{} {}: errors in the check run", proto.name(), s.who.name()),
                    r.errors,
                    0,
                ));
            }
        }
        if let Some(a) = agent {
            let st = a.status();
            dropped += recs(&st, "dropped_queue") + recs(&st, "dropped_spool");
        }
    }

    let mut body = String::new();
    body.push_str(&format!(
        "POST {} to `{}` with a 1024-byte OpenAI chat-completion body; the mock answers a \
         {}-word completion (≈1 KiB JSON). Every proxy terminates the client's TLS and speaks \
         TLS to the same mock upstream (`mock-provider`), verifying its certificate, over \
         kept-alive upstream connections; what else each does per request is in the table \
         below. egret runs with its default gateway; its client runs inside a registered \
         sandbox cgroup and is redirected by the kernel, the others are addressed directly. \
         Two capturing baselines: nginx with an access log and HAProxy with `option httplog`, \
         so the comparison is fair both ways — they write a line per request, egret a full \
         record with both bodies. Each proxy has one worker (egret's agent is started pinned, \
         so its runtime sizes itself to that one CPU).{} Proxy (subject) on CPU \
         {}; load generator and mock on CPU {}.\n\n",
        load::PATH,
        peers::HOST,
        load::OUTPUT_WORDS,
        if mitm.is_some() || !peers_on {
            ""
        } else {
            " mitmproxy is not installed: its rows are omitted."
        },
        crate::util::SUBJECT_CPU,
        crate::util::LOAD_CPU,
    ));
    body.push_str(&table(
        &[
            "subject",
            "client side",
            "upstream",
            "per request, besides proxying",
            "workers",
        ],
        &subjects
            .iter()
            .map(|s| {
                let [c, u, w] = s.who.per_request();
                vec![
                    s.who.name(),
                    c.into(),
                    u.into(),
                    w.into(),
                    s.who.workers().into(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    body.push('\n');
    body.push_str(&format!(
        "**Throughput** — HTTP/1.1: `wrk -t1 -c{WRK_CONNS}`, HTTP/2: `h2load -t1 -c{H2_CONNS} \
         -m{H2_STREAMS}`; {} s per run, {} round(s) per subject, interleaved. *CPU s/1k req* and \
         *req/s per core* are the proxy process's own user+system CPU (all its threads and \
         workers, `/proc/<pid>/stat`) over the requests it served.\n\n",
        p.secs, p.rounds
    ));
    body.push_str(&table(
        &[
            "protocol",
            "subject",
            "req/s (median)",
            "runs",
            "× direct",
            "proxy CPU s / 1k req",
            "req/s per proxy core",
            "errors",
        ],
        &tput_rows,
    ));
    if !per_core_notes.is_empty() {
        body.push_str(&format!(
            "\n**Per proxy core**, egret's req/s ÷ each capturing baseline's: {}.\n",
            per_core_notes.join("; ")
        ));
    }
    body.push_str(&format!(
        "\n**Latency at a moderate fixed rate** — `h2load -c{LAT_CLIENTS} -m1 --rps={LAT_RPS_EACH}` \
         ({} req/s offered; `--h1` for HTTP/1.1), {} s per run, {} round(s); percentiles over \
         every request of every round (h2load's per-request log), in ms; *added* is the \
         subject's percentile minus direct's.\n\n",
        LAT_CLIENTS * LAT_RPS_EACH,
        p.lat_secs,
        p.rounds
    ));
    body.push_str(&table(
        &[
            "protocol",
            "subject",
            "offered req/s",
            "achieved req/s",
            "p50",
            "p90",
            "p99",
            "added p50",
            "added p99",
        ],
        &lat_rows,
    ));
    body.push_str("\n**Memory after the runs** (RSS of the proxy process tree): ");
    body.push_str(
        &rss.iter()
            .map(|(w, k)| format!("{} {:.1} MiB", w.name(), *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", "),
    );
    body.push_str(&format!(
        ".\n\n**What each subject wrote per request** — the timed runs above stop with \
         requests in flight (served and written, but not counted by the tools), so each \
         capturing subject also gets, per protocol, one count-bound run (`h2load -n{check_count}`, \
         the throughput runs' connections and streams) in which every request completes. What \
         it wrote during that run must equal the requests completed, exactly: egret its \
         transaction records (the spool's counter, after the `fdatasync`'d append; records \
         dropped over the whole bench: {dropped}), nginx and HAProxy the lines of their log \
         files that quote a `POST {}` request line; each count is read once it has held still \
         for a second.\n\n",
        load::PATH,
    ));
    body.push_str(&table(
        &[
            "protocol",
            "subject",
            "written per request",
            "requests completed",
            "errors",
            "written",
            "check",
        ],
        &check_rows,
    ));
    drop(mitm);
    drop(haproxy);
    drop(nginx);
    drop(baseline);
    drop(egret);
    drop(mock);
    Ok(Section {
        id: "proxy",
        title: "Proxy: HTTPS 1 KiB JSON over keep-alive".into(),
        body,
        targets,
    })
}
