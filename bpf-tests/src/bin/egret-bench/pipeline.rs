//! Pipeline bench: records from capture to the spool, ClickHouse and OTLP,
//! counted where they land (zero loss, no duplicates); the spool's own
//! append ceiling with records injected through the library; and the
//! agent's memory with 1,000 idle sandbox connections (vs nginx and HAProxy).
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bpf_tests::clickhouse_rig::ClickHouseRig;
use egret::{config::SpoolConfig, record::Record, semconv as sc, store::Spool};
use serde_json::Value;

use crate::{
    load::{self, Payload},
    peers::{self, helper, hosts_file, Egret, Haproxy, Mock, Nginx, HOST},
    report::{table, Section, Target},
    util::{err, fmt_num, rss_kib, BenchError, BenchResult, IoContext, TempDir},
    Params,
};

fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("EGRET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| bpf_tests::workspace_root().join(".venv"));
    let py = venv.join("bin/python");
    py.exists().then_some(py)
}

/// The OTLP/HTTP receiver from bpf-tests/clients (PyPI opentelemetry-proto),
/// read incrementally: counts of spans and logs per (kind, invocation).
struct Receiver {
    child: Child,
    out: PathBuf,
    port: u16,
    offset: u64,
    /// (signal, record kind, invocation) → count.
    counts: HashMap<(String, String, String), u64>,
    ids: std::collections::HashSet<String>,
    dup_spans: u64,
}

impl Receiver {
    fn start(dir: &std::path::Path) -> BenchResult<Option<Receiver>> {
        let Some(py) = venv_python() else {
            return Ok(None);
        };
        let out = dir.join("otlp.jsonl");
        let mut child = Command::new(py)
            .arg(bpf_tests::clients_dir().join("otlp_receiver.py"))
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ctx(|| "start otlp_receiver.py".into())?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .ctx(|| "read receiver port".into())?;
        let Some(port) = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            return err(format!("otlp receiver said {line:?}"));
        };
        Ok(Some(Receiver {
            child,
            out,
            port,
            offset: 0,
            counts: HashMap::new(),
            ids: Default::default(),
            dup_spans: 0,
        }))
    }

    /// Reads what arrived since the last call.
    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.out) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        if f.read_to_string(&mut buf).is_err() {
            return;
        }
        // Only whole lines; a partial last line is read next time.
        let upto = buf.rfind('\n').map_or(0, |i| i + 1);
        for line in buf[..upto].lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let a = &v["attributes"];
            let Some(inv) = a[sc::INVOCATION_ID].as_str() else {
                continue;
            };
            let inv = inv.to_owned();
            let signal = v["signal"].as_str().unwrap_or("").to_owned();
            let kind = a[sc::RECORD_KIND]
                .as_str()
                .unwrap_or("transaction")
                .to_owned();
            if signal == "traces" {
                let id = v["span_id"].as_str().unwrap_or("").to_owned();
                if !self.ids.insert(id) {
                    self.dup_spans += 1;
                }
            }
            *self.counts.entry((signal, kind, inv)).or_default() += 1;
        }
        self.offset += upto as u64;
    }

    fn count(&self, signal: &str, kind: &str, inv: &str) -> u64 {
        self.counts
            .get(&(signal.to_owned(), kind.to_owned(), inv.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When each destination had all `n` records, seconds after `t0`.
#[derive(Default, Debug)]
struct Arrival {
    spool: Option<f64>,
    clickhouse: Option<f64>,
    otlp: Option<f64>,
    ch_rows: u64,
    ch_distinct: u64,
    otlp_items: u64,
}

fn ch_counts(ch: &ClickHouseRig, table: &str, inv: &str) -> (u64, u64) {
    let q = format!(
        "SELECT count(), uniqExact(egret_record_id) FROM egret.{table} FINAL WHERE invocation_id = '{inv}'"
    );
    ch.query(&q)
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((0, 0))
}

/// Polls the spool counter, ClickHouse and the OTLP receiver until all `n`
/// records of `kind` arrived everywhere (or `timeout`).
#[allow(clippy::too_many_arguments)]
fn wait_arrival(
    egret: &Egret,
    inv: &str,
    ch: Option<&ClickHouseRig>,
    rx: &mut Option<Receiver>,
    kind: &str,
    spool_base: u64,
    n: u64,
    t0: Instant,
    timeout: Duration,
) -> Arrival {
    let mut a = Arrival::default();
    let (status_key, table, signal) = if kind == sc::KIND_FLOW {
        ("flows", "flows", "logs")
    } else {
        ("transactions", "transactions", "traces")
    };
    let deadline = Instant::now() + timeout;
    loop {
        let now = t0.elapsed().as_secs_f64();
        if a.spool.is_none()
            && egret.status()["records"][status_key].as_u64().unwrap_or(0) - spool_base >= n
        {
            a.spool = Some(now);
        }
        if let (None, Some(ch)) = (a.clickhouse, ch) {
            let (rows, distinct) = ch_counts(ch, table, inv);
            a.ch_rows = rows;
            a.ch_distinct = distinct;
            if distinct >= n {
                a.clickhouse = Some(now);
            }
        }
        if let (None, Some(r)) = (a.otlp, rx.as_mut()) {
            r.poll();
            a.otlp_items = r.count(signal, kind, inv);
            if a.otlp_items >= n {
                a.otlp = Some(now);
            }
        }
        let done = a.spool.is_some()
            && (ch.is_none() || a.clickhouse.is_some())
            && (rx.is_none() || a.otlp.is_some());
        if done || Instant::now() > deadline {
            return a;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rate(n: u64, t: Option<f64>) -> String {
    t.map_or("did not arrive".into(), |t| {
        format!("{} /s ({t:.2} s)", fmt_num(n as f64 / t))
    })
}

/// Appends copies of `template` (fresh ids) to a fresh spool in batches of
/// 4,096 — what the agent's recorder does — and returns records/s.
fn spool_ceiling(dir: &std::path::Path, template: &Record, n: usize) -> BenchResult<f64> {
    let mut spool = Spool::open(&SpoolConfig {
        dir: dir.join("spool-inject"),
        max_bytes: 2 << 30,
        segment_bytes: 64 << 20,
        ..SpoolConfig::default()
    })
    .map_err(|e| BenchError::Msg(format!("open spool: {e}")))?;
    let batch: Vec<Record> = (0..4096)
        .map(|_| {
            let mut r = template.clone();
            r.set(sc::RECORD_ID, uuid::Uuid::new_v4().to_string());
            r
        })
        .collect();
    let t0 = Instant::now();
    let mut written = 0usize;
    while written < n {
        let k = (n - written).min(batch.len());
        let o = spool
            .append(&batch[..k])
            .map_err(|e| BenchError::Msg(format!("append: {e}")))?;
        if o.dropped > 0 {
            return err(format!("spool dropped {} injected records", o.dropped));
        }
        written += k;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// What the pipeline ceiling measured.
struct SinkCeiling {
    n: u64,
    /// Seconds from the first record fed until every record was in the
    /// spool, in ClickHouse and at the OTLP receiver (each, when it was).
    spool: Option<f64>,
    clickhouse: Option<f64>,
    otlp: Option<f64>,
    ch_rows: u64,
    ch_distinct: u64,
    otlp_items: u64,
    /// CPU seconds of the pipeline's threads (its runtime, the recorder).
    cpu: f64,
}

/// CPU seconds (user + system) of this process's threads but `exclude`.
fn threads_cpu(exclude: &[i32]) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for e in dir.flatten() {
        let tid: i32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
        if exclude.contains(&tid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: utime is the
        // 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / tick
}

fn gettid() -> i32 {
    unsafe { libc::gettid() }
}

/// Pins the calling thread (and the threads it starts) to `cpu`.
fn pin_thread(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The agent's record pipeline, in this process from egret's library —
/// `recorder::spawn` (stamp, redaction, group commit, `fdatasync`'d spool
/// append, `/metrics`, the OTLP exporters' queues), the ClickHouse sink's
/// delivery loop on a spool cursor and the OTLP exporters — on one runtime
/// thread and the recorder's thread, both pinned to the subject CPU. A
/// feeder thread on the other CPU puts `n` copies of a captured
/// transaction on the record queue as fast as it takes them (the proxy's
/// part is measured by the proxy bench). Timed until every record was in
/// the spool, ClickHouse and the OTLP receiver; the pipeline threads' CPU
/// over that time gives records per second per core.
fn pipeline_ceiling(
    dir: &std::path::Path,
    template: &Record,
    ch: &ClickHouseRig,
    rx: &mut Receiver,
    n: u64,
) -> BenchResult<SinkCeiling> {
    use egret::{
        config::Config,
        record::RecordStats,
        recorder::{self, Recorder},
        redact::{RedactionStats, Redactor},
        sink::{
            clickhouse::CURSOR_NAME,
            otlp::{metrics::PromMetrics, sinks_from_env},
            ClickHouseSink,
        },
    };
    let inv = bpf_tests::unique("inv-bench-pipeline-");
    let state = dir.join("pipeline-state");
    std::fs::create_dir_all(&state).ctx(|| "state dir".into())?;
    let yaml = format!(
        "node:\n  stateDir: {}\nstore:\n  spool:\n    dir: {}\n    maxBytes: 4294967296\n  clickhouse:\n    url: {}\n    flushInterval: 200ms\n\
         gateways:\n- name: bench\n  routes:\n  - {{name: openai, hosts: [api.openai.com], provider: openai}}\n\
         \x20 otlp:\n    endpoint: http://127.0.0.1:{}\n    queueCapacity: 1000000\n    signals: {{traces: true, logs: true, metrics: false}}\n",
        state.display(),
        state.join("spool").display(),
        ch.url(),
        rx.port
    );
    let cfg = Config::parse(&yaml, std::path::Path::new("pipeline-bench.yaml"))
        .map_err(|e| BenchError::Msg(format!("pipeline config: {e}")))?;
    let stats = Arc::new(RecordStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let (tx, queue) = tokio::sync::mpsc::channel::<Record>(recorder::QUEUE);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<i32, String>>();
    // The pipeline's runtime thread (pinned; the recorder's thread, started
    // from it, inherits the pin).
    let pipeline = {
        let (stats, stop) = (stats.clone(), stop.clone());
        std::thread::spawn(move || {
            pin_thread(crate::util::SUBJECT_CPU.parse().unwrap_or(0));
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return ready_tx.send(Err(format!("runtime: {e}"))).unwrap_or(()),
            };
            rt.block_on(async move {
                let started = (|| -> Result<_, String> {
                    let spool =
                        egret::store::Spool::open(&cfg.store.spool_or_default(&cfg.node.state_dir))
                            .map_err(|e| format!("spool: {e}"))?;
                    let cursor = spool.cursor(CURSOR_NAME).map_err(|e| e.to_string())?;
                    let ch = cfg.store.clickhouse.as_ref().ok_or("no clickhouse")?;
                    let sink = ClickHouseSink::new(ch).map_err(|e| e.to_string())?;
                    let otlp = sinks_from_env(&cfg, None).map_err(|e| e.to_string())?;
                    let redaction = Redactor::new(&cfg.redaction).map_err(|e| e.to_string())?;
                    let (tail, _) = tokio::sync::broadcast::channel(recorder::TAIL_BUFFER);
                    let done = recorder::spawn(
                        spool,
                        queue,
                        Recorder {
                            stamp: Box::new(|_| {}),
                            redaction: Arc::new(arc_swap::ArcSwap::from_pointee(redaction)),
                            redaction_stats: Arc::new(RedactionStats::default()),
                            otlp: Arc::new(arc_swap::ArcSwap::from_pointee(otlp)),
                            metrics: Arc::new(PromMetrics::new(cfg.node.metrics.max_series)),
                            tail,
                            stats,
                        },
                        stop.child_token(),
                    )
                    .map_err(|e| e.to_string())?;
                    Ok((sink, cursor, done))
                })();
                match started {
                    Ok((sink, cursor, done)) => {
                        let _ = ready_tx.send(Ok(gettid()));
                        let ch_task = tokio::spawn(sink.run(cursor, stop.child_token()));
                        stop.cancelled().await;
                        let _ = done.await;
                        let _ = ch_task.await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
    };
    match ready_rx.recv() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return err(format!("pipeline: {e}")),
        Err(_) => return err("pipeline thread ended before starting"),
    }
    // The feeder, on the load CPU.
    let (feeder_tid_tx, feeder_tid_rx) = std::sync::mpsc::channel();
    let feeder = {
        let mut t = template.clone();
        t.set(sc::INVOCATION_ID, inv.clone());
        std::thread::spawn(move || {
            pin_thread(crate::util::LOAD_CPU.parse().unwrap_or(1));
            let _ = feeder_tid_tx.send(gettid());
            for _ in 0..n {
                let mut r = t.clone();
                r.set(sc::RECORD_ID, uuid::Uuid::new_v4().to_string());
                if tx.blocking_send(r).is_err() {
                    break;
                }
            }
        })
    };
    let feeder_tid = feeder_tid_rx.recv().unwrap_or(0);
    let exclude = [gettid(), feeder_tid];
    let cpu0 = threads_cpu(&exclude);
    let t0 = Instant::now();
    let mut c = SinkCeiling {
        n,
        spool: None,
        clickhouse: None,
        otlp: None,
        ch_rows: 0,
        ch_distinct: 0,
        otlp_items: 0,
        cpu: 0.0,
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut cpu_at_end = None;
    while Instant::now() < deadline {
        let now = t0.elapsed().as_secs_f64();
        if c.spool.is_none()
            && stats
                .transactions
                .load(std::sync::atomic::Ordering::Relaxed)
                >= n
        {
            c.spool = Some(now);
        }
        if c.clickhouse.is_none() {
            (c.ch_rows, c.ch_distinct) = ch_counts(ch, "transactions", &inv);
            if c.ch_distinct >= n {
                c.clickhouse = Some(now);
            }
        }
        if c.otlp.is_none() {
            rx.poll();
            c.otlp_items = rx.count("traces", sc::KIND_TRANSACTION, &inv);
            if c.otlp_items >= n {
                c.otlp = Some(now);
            }
        }
        if c.spool.is_some() && c.clickhouse.is_some() && c.otlp.is_some() {
            cpu_at_end = Some(threads_cpu(&exclude));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    c.cpu = cpu_at_end.unwrap_or_else(|| threads_cpu(&exclude)) - cpu0;
    let _ = feeder.join();
    stop.cancel();
    let _ = pipeline.join();
    // Duplicates would show after the last one arrived: counted again.
    (c.ch_rows, c.ch_distinct) = ch_counts(ch, "transactions", &inv);
    Ok(c)
}

pub fn run(p: &Params) -> BenchResult<Section> {
    let dir = TempDir::new("egret-bench-pipeline-")?;
    let payload = Payload::write(dir.path())?;
    let mock = Mock::start(dir.path())?;
    let ch = ClickHouseRig::start().ok();
    let mut rx = Receiver::start(dir.path())?;
    let mut yaml = String::new();
    if let Some(ch) = &ch {
        yaml.push_str(&format!(
            "store:\n  clickhouse:\n    url: {}\n    flushInterval: 200ms\n",
            ch.url()
        ));
    }
    yaml.push_str(
        "gateways:\n- name: bench\n  routes:\n  - {name: openai, hosts: [api.openai.com], provider: openai}\n",
    );
    if let Some(r) = &rx {
        yaml.push_str(&format!(
            "  otlp:\n    endpoint: http://127.0.0.1:{}\n    queueCapacity: 1000000\n    signals: {{traces: true, logs: true, metrics: false}}\n",
            r.port
        ));
    }
    let egret = Egret::start(&mock, &yaml, None)?;
    let hosts = hosts_file(dir.path(), peers::MOCK_IP)?;
    let (n_tx, n_flow, n_inject) = if p.quick {
        (2_000u64, 2_000u64, 20_000usize)
    } else {
        (20_000, 20_000, 100_000)
    };

    // 1. Transactions driven through the proxy.
    let base = egret.status()["records"]["transactions"]
        .as_u64()
        .unwrap_or(0);
    let t0 = Instant::now();
    let r = load::h2load_count(Some(&egret.sandbox), &hosts, &payload, false, 8, 8, n_tx)?;
    let load_secs = t0.elapsed().as_secs_f64();
    if r.requests != n_tx || r.errors > 0 {
        return err(format!(
            "h2load: {} of {n_tx} succeeded, {} errors",
            r.requests, r.errors
        ));
    }
    let tx = wait_arrival(
        &egret,
        &egret.invocation,
        ch.as_ref(),
        &mut rx,
        sc::KIND_TRANSACTION,
        base,
        n_tx,
        t0,
        Duration::from_secs(120),
    );
    eprintln!("  pipeline transactions: {tx:?} (load {load_secs:.2} s)");

    // 2. Flows from the kernel: short connections from the sandbox.
    let acceptor = crate::util::Acceptor::start()?;
    let acc_addr = acceptor.addr;
    // A second sandbox (its own invocation), so step 1's connections don't count.
    let flow_id = bpf_tests::unique("benchflows");
    let flow_cg = egret.agent.cgroup(&flow_id);
    let flow_inv = bpf_tests::unique("inv-bench-flows-");
    egret.agent.register(&flow_id, None, &flow_inv);
    // Let step 1's connection closes reach the (global) flow counter first.
    std::thread::sleep(Duration::from_secs(1));
    let fbase = egret.status()["records"]["flows"].as_u64().unwrap_or(0);
    let t1 = Instant::now();
    let out = helper(
        Some(&flow_cg),
        &[
            "connect-loop",
            "--addr",
            &acc_addr.to_string(),
            "--src",
            "127.2.0.1",
            "--count",
            &n_flow.to_string(),
        ],
    )
    .output()
    .ctx(|| "connect-loop".into())?;
    let flow_load_secs = t1.elapsed().as_secs_f64();
    if !out.status.success() {
        return err("connect-loop failed");
    }
    let fl = wait_arrival(
        &egret,
        &flow_inv,
        ch.as_ref(),
        &mut rx,
        sc::KIND_FLOW,
        fbase,
        n_flow,
        t1,
        Duration::from_secs(120),
    );
    eprintln!("  pipeline flows: {fl:?} (load {flow_load_secs:.2} s)");
    drop(acceptor);
    let st = egret.status();
    let dropped = |k: &str| st["records"][k].as_u64().unwrap_or(0);
    let otlp_dropped: u64 = st["otlp"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = e.to_string();
            // Sum every "dropped" counter the exporter reports.
            serde_json::from_str::<Value>(&s)
                .ok()
                .map(|v| sum_key(&v, "dropped"))
                .unwrap_or(0)
        })
        .sum();

    // 3. Spool ceiling with injected records (a real transaction as template).
    let template = egret
        .agent
        .records()
        .into_iter()
        .find(|r| r.kind() == sc::KIND_TRANSACTION)
        .ok_or_else(|| BenchError::Msg("no transaction record to inject".into()))?;
    let template_bytes = {
        let mut payload = Vec::new();
        egret::store::encode_record(&mut payload, &template);
        payload.len()
    };
    let inject = spool_ceiling(dir.path(), &template, n_inject)?;
    eprintln!("  pipeline spool ceiling: {inject:.0} records/s");

    // 4. Memory with 1,000 idle sandbox connections, egret vs nginx and HAProxy.
    let idle = |sandbox: Option<&bpf_tests::SandboxCgroup>,
                addr: &str,
                pid: u32|
     -> BenchResult<(u64, u64, u64)> {
        let before = rss_kib(pid);
        let mut child = helper(
            sandbox,
            &["idle-conns", "--addr", addr, "--sni", HOST, "--n", "1000"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ctx(|| "idle-conns".into())?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .ctx(|| "idle-conns output".into())?;
        std::thread::sleep(Duration::from_secs(1));
        let after = rss_kib(pid);
        drop(child.stdin.take());
        let _ = child.wait();
        let open = line
            .strip_prefix("READY ")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .and_then(|v| v["open"].as_u64())
            .unwrap_or(0);
        Ok((before, after, open))
    };
    let (e0, e1, e_open) = idle(Some(&egret.sandbox), &mock.addr.to_string(), egret.pid)?;
    let nginx = Nginx::start(&mock)?;
    let (n0, n1, n_open) = idle(None, &format!("{}:443", peers::NGINX_IP), nginx.proc.pid())?;
    drop(nginx);
    let haproxy = Haproxy::start(&mock)?;
    let (h0, h1, h_open) = idle(
        None,
        &format!("{}:443", peers::HAPROXY_IP),
        haproxy.proc.pid(),
    )?;
    drop(haproxy);

    let mut targets = Vec::new();
    let mut rows = Vec::new();
    for (what, n, a, secs, ch_name) in [
        (
            "transactions (proxy → spool/ClickHouse/OTLP spans)",
            n_tx,
            &tx,
            load_secs,
            "transactions",
        ),
        (
            "flows (kernel close events → spool/ClickHouse/OTLP logs)",
            n_flow,
            &fl,
            flow_load_secs,
            "flows",
        ),
    ] {
        rows.push(vec![
            what.into(),
            n.to_string(),
            format!("{} /s", fmt_num(n as f64 / secs)),
            rate(n, a.spool),
            if ch.is_some() {
                rate(n, a.clickhouse)
            } else {
                "not run".into()
            },
            if rx.is_some() {
                rate(n, a.otlp)
            } else {
                "not run".into()
            },
        ]);
        if ch.is_some() {
            targets.push(Target::exact(
                &format!("{ch_name} in ClickHouse (distinct record ids)"),
                a.ch_distinct,
                n,
            ));
            targets.push(Target::exact(
                &format!("{ch_name} rows in ClickHouse (FINAL: duplicates collapse)"),
                a.ch_rows,
                n,
            ));
        }
        if rx.is_some() {
            targets.push(Target::exact(
                &format!(
                    "{ch_name} at the OTLP receiver ({})",
                    if ch_name == "flows" {
                        "log records"
                    } else {
                        "spans"
                    }
                ),
                a.otlp_items,
                n,
            ));
        }
    }
    targets.push(Target::exact(
        "records dropped (queue + spool + OTLP)",
        dropped("dropped_queue") + dropped("dropped_spool") + otlp_dropped,
        0,
    ));
    let dup = rx.as_ref().map_or(0, |r| r.dup_spans);
    targets.push(Target::exact(
        "duplicate spans at the OTLP receiver",
        dup,
        0,
    ));

    let mut body = format!(
        "One agent with ClickHouse ({}) and an OTLP/HTTP endpoint ({}) configured; every \
         record is counted where it lands. *Transactions*: `h2load -c8 -m8 -n{n_tx}` through \
         egret from the sandbox (the 1 KiB chat completion of the proxy bench). *Flows*: \
         {n_flow} connect()/close() from the sandbox (one kernel close event → one flow record \
         each). Rates are records ÷ time from the start of the load until the last record was \
         there (spool: the agent's counter after the fsync'd append; ClickHouse: \
         `uniqExact(egret_record_id)` with `FINAL`, `flushInterval: 200ms`; OTLP: spans / log \
         records carrying the sandbox's invocation id at the receiver), so they cannot exceed \
         the load's own rate (*offered*).\n\n",
        if ch.is_some() {
            "Debian's clickhouse-server, loopback"
        } else {
            "clickhouse-server not found: not run"
        },
        if rx.is_some() {
            "`bpf-tests/clients/otlp_receiver.py`, an independent decoder"
        } else {
            "no venv with opentelemetry-proto: not run"
        }
    );
    body.push_str(&table(
        &["records", "count", "offered", "spool", "ClickHouse", "OTLP"],
        &rows,
    ));
    body.push_str(&format!(
        "\n**Spool ceiling** — the library's `Spool::append` (what the recorder calls) with \
         {n_inject} copies of a captured transaction record ({template_bytes}-byte frame \
         payload each) in batches of 4,096, each batch one write + `fdatasync`: **{} records/s** \
         ({:.0}× the proxy's offered transaction rate above).\n",
        fmt_num(inject),
        inject / (n_tx as f64 / load_secs)
    ));
    let per = |a: u64, b: u64, n: u64| (b as f64 - a as f64) / n.max(1) as f64;
    let e_per = per(e0, e1, e_open);
    let n_per = per(n0, n1, n_open);
    let h_per = per(h0, h1, h_open);
    body.push_str(&format!(
        "\n**Memory with 1,000 idle connections** — `egret-bench idle-conns` opens 1,000 TLS \
         connections, makes one request on each (so egret also holds the upstream connection) \
         and leaves them idle: egret's RSS went from {:.1} to {:.1} MiB ({e_open} open) = \
         **{e_per:.1} KiB per connection**; nginx in the same role from {:.1} to {:.1} MiB \
         ({n_open} open) = {n_per:.1} KiB per connection ({:.1}× nginx); HAProxy (`nbthread \
         1`, `http-reuse always`, so idle upstream connections are shared) from {:.1} to \
         {:.1} MiB ({h_open} open) = {h_per:.1} KiB per connection ({:.1}× HAProxy). RSS is \
         read 1 s after the last connection opened; nginx's counts its master and worker.\n",
        e0 as f64 / 1024.0,
        e1 as f64 / 1024.0,
        n0 as f64 / 1024.0,
        n1 as f64 / 1024.0,
        e_per / n_per,
        h0 as f64 / 1024.0,
        h1 as f64 / 1024.0,
        e_per / h_per
    ));
    targets.push(Target::at_most(
        "memory per idle TLS connection (both legs), egret ÷ nginx",
        e_per / n_per,
        1.0,
        "×",
    ));

    // 5. The pipeline's ceiling: the recorder and both sinks fed as fast as
    // they take records.
    drop(egret);
    let n_sink: u64 = if p.quick { 5_000 } else { 100_000 };
    match (&ch, rx.as_mut()) {
        (Some(ch), Some(r)) => {
            let c = pipeline_ceiling(dir.path(), &template, ch, r, n_sink)?;
            let per_core = c.n as f64 / c.cpu.max(1e-9);
            let secs =
                |t: Option<f64>| t.map_or("— (did not arrive)".into(), |t| format!("{t:.2} s"));
            eprintln!(
                "  pipeline ceiling: {} records, pipeline CPU {:.2} s ({per_core:.0} /s per core), spool {:?} s, ClickHouse {:?} s, OTLP {:?} s",
                c.n, c.cpu, c.spool, c.clickhouse, c.otlp
            );
            body.push_str(&format!(
                "\n**Pipeline ceiling** — the agent's record pipeline from egret's library, in the \
                 bench process: `recorder::spawn` (stamp, redaction, group commit, `fdatasync`'d \
                 spool append, `/metrics`, the OTLP exporters' queues), the ClickHouse sink's \
                 delivery loop on its spool cursor and the OTLP/HTTP exporter, on one runtime \
                 thread and the recorder's thread, both pinned to CPU {}; a feeder thread on CPU {} \
                 puts {} copies of the captured transaction (fresh ids) on the record queue as fast \
                 as it takes them. Every record was in the spool after {}, in ClickHouse after {} \
                 and at the OTLP receiver after {} (the receivers run on the other CPU and bound \
                 these times). The pipeline's threads spent {:.2} s of CPU: **{} records/s per \
                 core** through spool → ClickHouse + OTLP.\n",
                crate::util::SUBJECT_CPU,
                crate::util::LOAD_CPU,
                fmt_num(c.n as f64),
                secs(c.spool),
                secs(c.clickhouse),
                secs(c.otlp),
                c.cpu,
                fmt_num(per_core)
            ));
            targets.push(Target::at_least(
                "records/s through spool → ClickHouse + OTLP, per pipeline core",
                per_core,
                50_000.0,
                " /s",
            ));
            targets.push(Target::exact(
                "pipeline ceiling: records in ClickHouse (distinct record ids)",
                c.ch_distinct,
                c.n,
            ));
            targets.push(Target::exact(
                "pipeline ceiling: rows in ClickHouse (FINAL: duplicates collapse)",
                c.ch_rows,
                c.n,
            ));
            targets.push(Target::exact(
                "pipeline ceiling: spans at the OTLP receiver",
                c.otlp_items,
                c.n,
            ));
        }
        _ => body.push_str(
            "\n**Pipeline ceiling** — not run (needs ClickHouse and the OTLP receiver).\n",
        ),
    }
    drop(rx);
    drop(ch);
    drop(mock);
    Ok(Section {
        id: "pipeline",
        title: "Pipeline: capture → spool → ClickHouse → OTLP, and idle memory".into(),
        body,
        targets,
    })
}

fn sum_key(v: &Value, key: &str) -> u64 {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                if k.contains(key) {
                    x.as_u64().unwrap_or(0) + sum_key(x, key)
                } else {
                    sum_key(x, key)
                }
            })
            .sum(),
        Value::Array(a) => a.iter().map(|x| sum_key(x, key)).sum(),
        _ => 0,
    }
}
