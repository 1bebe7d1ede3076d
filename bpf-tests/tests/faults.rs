//! Fault injection: what happens to capture when the things around it
//! fail — sinks down or slow, the spool's disk full, upstreams and clients
//! that misbehave, thousands of connections, the agent stopped mid-flight.
//! Each test builds its own world (mock provider, agent, sandboxes, and a
//! ClickHouse server or misbehaving peers where needed) and tears it down.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bpf_tests::{world::*, *};
use egret::{record::Record, semconv as sc};
use serde_json::Value;

fn i(rec: &Record, key: &str) -> i64 {
    rec.get_i64(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", rec.to_json_line()))
}

fn lines(recs: &[&Record]) -> String {
    recs.iter()
        .map(|r| r.to_json_line())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `fault_server.py` (bpf-tests/clients): resets and compression bombs.
struct FaultServer {
    child: Child,
}

impl FaultServer {
    fn start(ip: &str, port: u16) -> FaultServer {
        let mut child = Command::new("python3")
            .arg(clients_dir().join("fault_server.py"))
            .args([ip, &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("fault server");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("LISTENING"), "fault server said {line:?}");
        FaultServer { child }
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `conn_client.py MODE ARGS` in the sandbox, to completion; its JSON line.
fn conn_client(w: &World, cg: &SandboxCgroup, args: &[&str]) -> Value {
    let script = clients_dir().join("conn_client.py");
    let out = w.run(
        cg,
        Path::new("/usr/bin/python3"),
        &[&[script.to_str().unwrap()], args].concat(),
    );
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("conn_client said {out:?}: {e}"))
}

/// Waits until the agent's open fds fall back to at most `limit`.
fn wait_fds(agent: &Agent, limit: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = agent.fd_count();
        if n <= limit || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn fault_world(fault_port: u16) -> World {
    World::with(WorldOptions {
        plain_ports: vec![80],
        agent: AgentOptions {
            capture_ports: vec![fault_port, fault_port + 1],
            ..AgentOptions::default()
        },
        ..WorldOptions::default()
    })
}

#[test]
fn upstream_resets_client_aborts_and_half_closes_are_recorded_with_their_error() {
    if !require_privileges("upstream_resets") {
        return;
    }
    let w = fault_world(8080);
    let _faults = FaultServer::start(&w.ip, 8080);
    let inv = unique("inv-faults-");
    let cg = w.sandbox(&inv, None);
    let fds_before = w.agent.fd_count();

    // The upstream resets mid-body: the client gets a truncated body, the
    // record says why.
    let out = w
        .command(&cg, Path::new("/usr/bin/curl"))
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "http://api.openai.com:8080/reset",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "curl saw the reset");
    // Nothing listens on the second captured port: a 502, recorded.
    let out = w.curl(
        &cg,
        &["-w", "\n%{http_code}", "http://api.openai.com:8081/refused"],
    );
    assert!(out.ends_with("\n502"), "{out}");
    // The client gives up mid-stream.
    let out = w
        .command(&cg, Path::new("/usr/bin/curl"))
        .args([
            "-sSN",
            "--max-time",
            "1",
            "-o",
            "/dev/null",
            "https://api.openai.com/sse/200?interval_ms=50",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(28), "curl timed out on purpose");
    // A client that half-closes after its request still gets the answer.
    let half = conn_client(
        &w,
        &cg,
        &["halfclose", "api.openai.com", "80", "--path", "/json/1000"],
    );
    assert_eq!(half["status"], 200, "{half}");
    assert_eq!(half["body_bytes"], 1000, "{half}");

    let recs = w.transactions(&inv, 4);
    let by = |path: &str| -> &Record {
        recs.iter()
            .find(|r| r.get_str(sc::URL_PATH).is_some_and(|p| p.starts_with(path)))
            .unwrap_or_else(|| {
                panic!(
                    "no record for {path}:\n{}",
                    lines(&recs.iter().collect::<Vec<_>>())
                )
            })
    };
    let reset = by("/reset");
    assert_eq!(
        reset.get_str(sc::ERROR_TYPE),
        Some("upstream_body_error"),
        "{}",
        reset.to_json_line()
    );
    assert!(
        i(reset, sc::RESP_BYTES) < 10 << 20,
        "{}",
        reset.to_json_line()
    );
    let refused = by("/refused");
    assert_eq!(
        refused.get_str(sc::ERROR_TYPE),
        Some("upstream_connect"),
        "{}",
        refused.to_json_line()
    );
    assert_eq!(i(refused, sc::HTTP_RESPONSE_STATUS_CODE), 502);
    let aborted = by("/sse/");
    assert_eq!(
        aborted.get_str(sc::ERROR_TYPE),
        Some("client_aborted"),
        "{}",
        aborted.to_json_line()
    );
    let ok = by("/json/1000");
    assert!(ok.get(sc::ERROR_TYPE).is_none(), "{}", ok.to_json_line());
    assert_eq!(i(ok, sc::RESP_BYTES), 1000);

    let fds_after = wait_fds(&w.agent, fds_before, Duration::from_secs(10));
    eprintln!("MEASURED upstream_resets: agent fds before {fds_before}, after {fds_after}");
    assert!(
        fds_after <= fds_before,
        "fd leak: {fds_before} → {fds_after}"
    );
}

#[test]
fn slowloris_clients_are_cut_off_by_the_header_timeout_with_bounded_memory() {
    if !require_privileges("slowloris") {
        return;
    }
    let w = World::with(WorldOptions {
        plain_ports: vec![80],
        ..WorldOptions::default()
    });
    let inv = unique("inv-slow-");
    let cg = w.sandbox(&inv, None);
    // Warm up (leaf cache, upstream TLS roots) so baselines are steady.
    w.curl(&cg, &["-o", "/dev/null", "http://api.openai.com/json/10"]);
    std::thread::sleep(Duration::from_secs(1));
    let fds_before = w.agent.fd_count();
    let (rss_before, _) = w.agent.rss_kib();
    let conns = 200;
    let t0 = Instant::now();
    let res = conn_client(
        &w,
        &cg,
        &[
            "slowloris",
            "api.openai.com",
            "80",
            "--conns",
            &conns.to_string(),
            "--interval",
            "1",
            "--limit",
            "60",
        ],
    );
    let elapsed = t0.elapsed();
    let all = res["conns"].as_array().unwrap();
    assert_eq!(all.len(), conns);
    let mut closed_at: Vec<f64> = Vec::new();
    for c in all {
        assert_eq!(c["connected"], true, "{c}");
        let at = c["closed_at"]
            .as_f64()
            .unwrap_or_else(|| panic!("a slowloris connection was never closed: {c}"));
        // One byte a second: the head (~250 bytes) is never complete.
        assert!(
            c["answer"].as_str().unwrap_or("").is_empty()
                || c["answer"].as_str().unwrap().starts_with("HTTP/1.1 408"),
            "{c}"
        );
        closed_at.push(at);
    }
    closed_at.sort_by(f64::total_cmp);
    let (first, last) = (closed_at[0], closed_at[conns - 1]);
    let (rss_peak, _) = w.agent.rss_kib();
    let fds_after = wait_fds(&w.agent, fds_before, Duration::from_secs(10));
    let (rss_after, hwm) = w.agent.rss_kib();
    eprintln!(
        "MEASURED slowloris: {conns} conns closed by the agent after {first:.1}–{last:.1} s \
         (client ran {elapsed:?}); agent fds {fds_before} → {fds_after}; \
         RSS {rss_before} → {rss_peak} → {rss_after} KiB (HWM {hwm} KiB)"
    );
    // The 30 s header timeout (plus the ≤5 s sniff) closes them, not the
    // client's own 60 s limit.
    assert!(first >= 25.0 && last <= 45.0, "closed at {first}–{last} s");
    assert!(
        fds_after <= fds_before,
        "fd leak: {fds_before} → {fds_after}"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 32 * 1024,
        "RSS grew {rss_before} → {rss_after} KiB"
    );
    // Nothing reached the provider: no request was ever complete.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(w.transactions(&inv, 1).len(), 1, "only the warm-up request");
}

/// A `conn_client.py many` run in the sandbox, holding its connections
/// open until told to close them.
fn many_conns(w: &World, cg: &SandboxCgroup, conns: usize) -> HeldClient {
    let mut cmd = w.command(cg, Path::new("/usr/bin/python3"));
    cmd.arg(clients_dir().join("conn_client.py")).args([
        "many",
        "api.openai.com",
        "80",
        "--conns",
        &conns.to_string(),
        "--parallel",
        "200",
        "--path",
        "/json/100",
    ]);
    HeldClient::spawn(cmd)
}

#[test]
fn thousands_of_concurrent_sandbox_connections_leak_no_fds_and_memory_stays_bounded() {
    if !require_privileges("many_connections") {
        return;
    }
    let conns: usize = std::env::var("EGRET_FAULT_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    // The mock (and the client, which raises its own) need more than the
    // usual 1024 descriptors; the agent starts with 1024 like under a
    // default systemd unit and must raise its own limit.
    let limit = raise_nofile(2 * conns as u64 + 1024);
    assert!(
        limit >= 2 * conns as u64 + 256,
        "RLIMIT_NOFILE {limit} is too low for {conns} connections (set EGRET_FAULT_CONNS lower)"
    );
    let w = World::with(WorldOptions {
        plain_ports: vec![80],
        agent: AgentOptions {
            nofile_soft: Some(1024),
            ..AgentOptions::default()
        },
        ..WorldOptions::default()
    });
    let inv = unique("inv-many-");
    let cg = w.sandbox(&inv, None);
    w.curl(&cg, &["-o", "/dev/null", "http://api.openai.com/json/10"]);
    std::thread::sleep(Duration::from_secs(1));
    let fds_before = w.agent.fd_count();
    let (rss_before, _) = w.agent.rss_kib();
    let rounds = 3;
    let mut open_rss = Vec::new();
    for round in 0..rounds {
        let mut client = many_conns(&w, &cg, conns);
        let report = client.next_report();
        let fds_open = w.agent.fd_count();
        let (rss_open, _) = w.agent.rss_kib();
        assert_eq!(
            report["ok"].as_u64(),
            Some(conns as u64),
            "round {round}: {report}\nagent log:\n{}",
            w.agent.log_text()
        );
        client.say("close");
        let closed = client.next_report();
        assert_eq!(closed["closed"].as_u64(), Some(conns as u64));
        client.finish_quietly();
        let fds_after = wait_fds(&w.agent, fds_before, Duration::from_secs(30));
        // Freed memory goes back to the kernel within the agent's trim
        // interval (10 s).
        let deadline = Instant::now() + Duration::from_secs(25);
        let rss_after = loop {
            let (rss, _) = w.agent.rss_kib();
            if rss <= rss_before + 48 * 1024 || Instant::now() > deadline {
                break rss;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        eprintln!(
            "MEASURED many_connections round {round}: {conns} concurrent conns in {:.1} s; \
             agent fds {fds_before} → {fds_open} (all open) → {fds_after}; \
             RSS {rss_before} → {rss_open} (all open) → {rss_after} KiB",
            report["seconds"].as_f64().unwrap_or(0.0)
        );
        assert!(
            fds_open >= fds_before + conns,
            "the connections were not all open at once ({fds_open} fds)"
        );
        assert!(
            fds_after <= fds_before,
            "fd leak: {fds_before} → {fds_after}"
        );
        assert!(
            rss_after <= rss_before + 48 * 1024,
            "round {round}: RSS stayed at {rss_after} KiB (from {rss_before})"
        );
        open_rss.push(rss_open);
    }
    // Bounded: the same load costs the same memory every time.
    assert!(
        open_rss[rounds - 1] <= open_rss[0] + open_rss[0] / 4 + 16 * 1024,
        "RSS with the connections open grew round after round: {open_rss:?} KiB"
    );
    let recs = w.transactions(&inv, rounds * conns + 1);
    assert_eq!(recs.len(), rounds * conns + 1, "one record per request");
}
