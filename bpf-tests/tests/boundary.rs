//! The sandbox boundary, enforced in the kernel: a sandbox (root inside
//! its cgroup, any syscall) reaches none of the agent's own endpoints by
//! any address form, opens no raw socket, and cannot leave kernel
//! state behind that would cost other sandboxes their attribution.
use std::{process::Command, time::Duration};

use bpf_tests::*;
use egret::{record::Record, semconv as sc};

fn i(rec: &Record, key: &str) -> i64 {
    rec.get_i64(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", rec.to_json_line()))
}

/// Every form that lands on the agent netns's loopback.
const LOCAL_FORMS: [&str; 7] = [
    "127.0.0.1",
    "127.0.0.9",
    "0.0.0.0",
    "::ffff:0.0.0.0",
    "::ffff:127.0.0.1",
    "::",
    "::1",
];

#[test]
fn agent_endpoints_are_refused_by_every_address_form() {
    if !require_privileges("agent_endpoints") {
        return;
    }
    // Admin on loopback (the default) and the PROXY-protocol listener on
    // loopback: a sandbox in the agent's netns tries every local form.
    let pp_port = free_port();
    let agent = Agent::start(AgentOptions {
        extra_node_yaml: format!(
            "  proxyProtocol:\n    listen: 127.0.0.1:{pp_port}\n    trustedCidrs: [127.0.0.1/32]\n"
        ),
        ..AgentOptions::default()
    });
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, "inv-forms");
    for port in [agent.admin_port, pp_port] {
        let pairs: Vec<(&str, u16)> = LOCAL_FORMS.iter().map(|h| (*h, port)).collect();
        let words = connect_words(sandboxed(&cg, None, "python3"), &pairs, false);
        assert_eq!(
            words,
            vec!["eperm"; LOCAL_FORMS.len()],
            "sandbox reached agent port {port} via {LOCAL_FORMS:?}"
        );
        // The host itself still reaches both.
        let words = connect_words(Command::new("python3"), &[("127.0.0.1", port)], false);
        assert_eq!(words, ["connected"]);
    }
    assert!(agent.kernel_stat("admin_refused") >= 2 * LOCAL_FORMS.len() as u64);
    drop(agent);

    // Admin on a wildcard address: a sandbox in its own netns reaches it
    // through the host end of its veth (a node address) — refused, while a
    // process in that netns outside any sandbox connects.
    let ns = Netns::new();
    let _veth = Veth::new(&ns, "10.232.1.1", "10.232.1.2");
    let agent = Agent::start(AgentOptions {
        admin_ip: Some("0.0.0.0".into()),
        ..AgentOptions::default()
    });
    let port = agent.admin_port;
    let nid = unique("sb");
    let ncg = agent.cgroup(&nid);
    agent.register(&nid, Some(&ns), "inv-wild");
    let words = connect_words(
        sandboxed(&ncg, Some(&ns), "python3"),
        &[("10.232.1.1", port)],
        false,
    );
    assert_eq!(
        words,
        ["eperm"],
        "sandbox netns reached a wildcard admin via the node"
    );
    let words = connect_words(ns.command("python3"), &[("10.232.1.1", port)], false);
    assert_eq!(words, ["connected"], "the route itself works");
    // Its own loopback is its own: nothing of the agent's there.
    let words = connect_words(
        sandboxed(&ncg, Some(&ns), "python3"),
        &[("0.0.0.0", port)],
        false,
    );
    assert_eq!(words, ["refused"]);
}

/// Tries each socket kind; prints `created` or `eperm` per kind.
const SOCKETS_PY: &str = r#"
import socket
kinds = [
    (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
    (socket.AF_INET, socket.SOCK_STREAM, 0),
    (socket.AF_INET, socket.SOCK_DGRAM, 0),
]
for f, t, p in kinds:
    try:
        socket.socket(f, t, p).close(); print("created")
    except PermissionError:
        print("eperm")
"#;

fn socket_words(mut cmd: Command) -> Vec<String> {
    let out = cmd.args(["-c", SOCKETS_PY]).output().expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn raw_sockets_are_refused_in_sandboxes() {
    if !require_privileges("raw_sockets") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, "inv-raw");
    // Packet sockets (AF_PACKET) never reach the inet hooks; they need
    // CAP_NET_RAW, which `egret exec` drops (see the exec test).
    let refused = ["eperm", "eperm", "eperm", "created", "created"];
    assert_eq!(socket_words(sandboxed(&cg, None, "python3")), refused);
    assert_eq!(agent.kernel_stat("raw_socket_refused"), 3);
    // Outside the sandbox tree (root), nothing changes.
    assert_eq!(socket_words(Command::new("python3")), ["created"; 5]);
    drop(agent);

    // Switched off: a sandbox runtime that needs them says so.
    let agent = Agent::start(AgentOptions {
        extra_node_yaml: "  blockRawSockets: false\n".into(),
        ..AgentOptions::default()
    });
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, "inv-raw-off");
    assert_eq!(
        socket_words(sandboxed(&cg, None, "python3")),
        ["created"; 5]
    );
}

/// Connects `n` times to an unroutable address, closing each socket;
/// prints how many failed with ENETUNREACH. Bounded by `limit` seconds.
const FLOOD_PY: &str = r#"
import errno, socket, sys, time
n, limit = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + limit
unreachable = 0
for k in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect(("192.0.2.1", 9))
    except OSError as e:
        if e.errno == errno.ENETUNREACH:
            unreachable += 1
    s.close()
    if k % 1000 == 0 and time.monotonic() > end:
        break
print(unreachable)
"#;

fn map_entries(agent: &Agent, map: &str) -> u64 {
    agent
        .metric(&format!("egret_kernel_map_entries{{map=\"{map}\"}}"))
        .unwrap_or_else(|| panic!("no egret_kernel_map_entries for {map}")) as u64
}

#[test]
fn failed_connect_floods_leave_no_kernel_state_and_spare_other_sandboxes() {
    if !require_privileges("connect_flood") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    let server = byte_server("127.0.0.1:0");
    // The victim holds an idle connection through the flood.
    let vid = unique("sb");
    let vcg = agent.cgroup(&vid);
    let vinv = unique("inv-victim-");
    agent.register(&vid, None, &vinv);
    let mut victim = HeldClient::spawn({
        let mut c = sandboxed(&vcg, None, "python3");
        c.arg(clients_dir().join("tcp_client.py"))
            .arg("127.0.0.1")
            .arg(server.port().to_string())
            .args(["--request-bytes=100", "--response-bytes=1000", "--hold"]);
        c
    });
    victim.next_report();
    let baseline = (map_entries(&agent, "tags"), map_entries(&agent, "counters"));
    assert!(baseline.0 >= 1, "the victim's socket is tagged");

    // The attacker: its own netns with no route at all, so every connect
    // fails in routing, after connect4 ran. More connects than the tag map
    // holds (262,144): before sockets' state died with them, this filled it.
    let ns = Netns::new();
    let aid = unique("sb");
    let acg = agent.cgroup(&aid);
    agent.register(&aid, Some(&ns), "inv-flood");
    let n = 262_144 + 40_000;
    let out = sandboxed(&acg, Some(&ns), "python3")
        .args(["-c", FLOOD_PY, &n.to_string(), "240"])
        .output()
        .expect("flood");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        failed >= 100_000,
        "only {failed} connects failed as unreachable"
    );

    // Occupancy is back to its baseline (the release hook already ran for
    // every closed socket; waiting only covers the metric read).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = (map_entries(&agent, "tags"), map_entries(&agent, "counters"));
        if now == baseline {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "map occupancy {now:?} never returned to {baseline:?} after {failed} failed connects"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(agent.kernel_stat("tags_released") >= failed as u64);

    // The victim's connection kept its attribution and exact bytes.
    victim.say("more 50 500");
    victim.next_report();
    victim.finish();
    let recs = agent.wait_records("the victim's flow", |r| flows_of(r, &vinv).len() == 1);
    let f = flows_of(&recs, &vinv)[0];
    assert_eq!(i(f, sc::L4_BYTES_SANDBOX_TX), 150, "{}", f.to_json_line());
    assert_eq!(i(f, sc::L4_BYTES_SANDBOX_RX), 1500, "{}", f.to_json_line());
    assert!(f.get_bool(sc::L4_COUNTERS_MISSING).is_none());
}

/// Prints the workload's uid, its effective and bounding capability sets
/// (hex, from /proc) and whether a packet socket can be created.
const WHOAMI_PY: &str = r#"
import os, socket
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300).close(); packet = "created"
except PermissionError:
    packet = "eperm"
print(os.getuid(), st["CapEff"].strip(), st["CapBnd"].strip(), packet)
"#;

fn exec_whoami(agent: &Agent, flags: &[&str]) -> (Vec<String>, String) {
    let out = Command::new(egret_bin())
        .arg("--config")
        .arg(&agent.config)
        .arg("exec")
        .args(flags)
        .args(["--", "python3", "-c", WHOAMI_PY])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exec {flags:?}: {stderr}");
    let words = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (words, stderr)
}

fn has_cap(hex: &str, cap: u32) -> bool {
    u64::from_str_radix(hex, 16).unwrap() & (1 << cap) != 0
}

#[test]
fn egret_exec_drops_capabilities_and_runs_as_the_given_user() {
    if !require_privileges("exec_caps") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    // NET_ADMIN, NET_RAW, SYS_ADMIN, BPF: gone from every set; packet
    // sockets (which no inet hook sees) refused for want of NET_RAW.
    let (w, stderr) = exec_whoami(&agent, &[]);
    assert_eq!(w[0], "0");
    for cap in [12, 13, 21, 39] {
        assert!(!has_cap(&w[1], cap), "effective has cap {cap}: {w:?}");
        assert!(!has_cap(&w[2], cap), "bounding has cap {cap}: {w:?}");
    }
    assert_eq!(w[3], "eperm", "packet socket in a sandbox");
    assert!(stderr.contains("use --user"), "{stderr}");
    // --user: another uid, no capabilities at all.
    let (w, _) = exec_whoami(&agent, &["--user", "65534:65534"]);
    assert_eq!(
        (w[0].as_str(), w[1].as_str()),
        ("65534", "0000000000000000")
    );
    assert_eq!(w[3], "eperm");
    // --privileged keeps them, loudly.
    let (w, stderr) = exec_whoami(&agent, &["--privileged"]);
    assert!(has_cap(&w[1], 13) && has_cap(&w[1], 21), "{w:?}");
    assert_eq!(w[3], "created");
    assert!(stderr.contains("WARNING: --privileged"), "{stderr}");
}

/// Runs curl in a world sandbox: (http code, what the body said).
fn curl_code(w: &bpf_tests::world::World, cg: &SandboxCgroup, args: &[&str]) -> (String, String) {
    let out = w.curl(cg, &[&["-w", "\n%{http_code}"], args].concat());
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.to_owned(), body.to_owned())
}

#[test]
fn destinations_are_the_truth_for_plain_http_and_tls() {
    if !require_privileges("destinations") {
        return;
    }
    let w = bpf_tests::world::World::with(bpf_tests::world::WorldOptions {
        plain_ports: vec![80],
        ..Default::default()
    });
    // A local server the sandbox can reach on port 80 under another address.
    let other = {
        let ip = bpf_tests::world::own_loopback();
        byte_server(&format!("{ip}:80"))
    };
    let inv = unique("inv-dst-");
    let cg = w.sandbox(&inv, None);

    // Plain HTTP with a routed Host the address does not resolve to: refused.
    let url = format!("http://{}/123", other.ip());
    let (code, body) = curl_code(&w, &cg, &["-H", "Host: api.anthropic.com", &url]);
    assert_eq!(code, "421", "{body}");
    assert!(body.contains("destination_unverified"), "{body}");
    // The same name where it resolves: served, recorded under the name.
    let (code, _) = curl_code(&w, &cg, &["http://api.openai.com/json/10"]);
    assert_eq!(code, "200");

    // TLS: a Host that is not the SNI never reaches a provider, on h1 or h2.
    for version in ["--http1.1", "--http2"] {
        let (code, body) = curl_code(
            &w,
            &cg,
            &[
                version,
                "-H",
                "Host: api.anthropic.com",
                "https://api.openai.com/json/10",
            ],
        );
        assert_eq!(code, "421", "{version}: {body}");
        assert!(body.contains("host_sni_mismatch"), "{body}");
    }
    let (code, _) = curl_code(&w, &cg, &["https://api.openai.com/json/10"]);
    assert_eq!(code, "200");

    let recs = w.transactions(&inv, 5);
    let by = |err: &str| -> Vec<&Record> {
        recs.iter()
            .filter(|r| r.get_str(sc::ERROR_TYPE) == Some(err))
            .collect()
    };
    let plain = by("destination_unverified");
    assert_eq!(plain.len(), 1);
    let p = plain[0];
    assert_eq!(
        p.get_str(sc::DST_NAME),
        Some(other.ip().to_string().as_str())
    );
    assert_eq!(p.get_str(sc::DST_CLAIMED_NAME), Some("api.anthropic.com"));
    assert_eq!(i(p, sc::HTTP_RESPONSE_STATUS_CODE), 421);
    let tls = by("host_sni_mismatch");
    assert_eq!(tls.len(), 2);
    assert!(tls
        .iter()
        .all(|r| r.get_str(sc::DST_NAME) == Some("api.openai.com")));
    let ok: Vec<&Record> = recs
        .iter()
        .filter(|r| r.get_i64(sc::HTTP_RESPONSE_STATUS_CODE) == Some(200))
        .collect();
    assert_eq!(ok.len(), 2);
    assert!(ok
        .iter()
        .all(|r| r.get_str(sc::DST_NAME) == Some("api.openai.com")
            && r.get_str(sc::DST_CLAIMED_NAME).is_none()));
}

#[test]
fn a_sandbox_netns_inside_trusted_cidrs_cannot_reach_the_proxy_protocol_listener() {
    if !require_privileges("pp_from_sandbox_netns") {
        return;
    }
    // A misconfigured node: the PROXY listener on a wildcard and its
    // trusted network covering a sandbox's veth (sandboxCidrs names another
    // range, so the config check cannot see it). The kernel still refuses
    // the sandbox, through every node address.
    let ns = Netns::new();
    let _veth = Veth::new(&ns, "10.232.2.1", "10.232.2.2");
    let pp_port = free_port();
    let agent = Agent::start(AgentOptions {
        extra_node_yaml: format!(
            "  sandboxCidrs: [10.99.0.0/16]\n  proxyProtocol:\n    listen: 0.0.0.0:{pp_port}\n    trustedCidrs: [10.232.2.0/24]\n"
        ),
        ..AgentOptions::default()
    });
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, Some(&ns), "inv-pp-ns");
    let words = connect_words(
        sandboxed(&cg, Some(&ns), "python3"),
        &[("10.232.2.1", pp_port)],
        false,
    );
    assert_eq!(
        words,
        ["eperm"],
        "sandbox reached the PROXY-protocol listener"
    );
    // A trusted dialer in that network, outside any sandbox, still connects.
    let words = connect_words(ns.command("python3"), &[("10.232.2.1", pp_port)], false);
    assert_eq!(words, ["connected"]);
}

/// The agent's resident memory (KiB).
fn rss_kib(agent: &Agent) -> u64 {
    proc_rss_kib(agent.pid().expect("agent pid")).0
}

#[test]
fn a_hostile_sandbox_cannot_exhaust_the_agent_or_starve_another() {
    if !require_privileges("hostile_sandbox") {
        return;
    }
    use bpf_tests::world::*;
    let w = World::with(WorldOptions {
        plain_ports: vec![80],
        agent: AgentOptions {
            extra_node_yaml: "  limits:\n    maxConnectionsPerSandbox: 200\n".into(),
            ..AgentOptions::default()
        },
        ..WorldOptions::default()
    });
    let hostile = w.sandbox(&unique("inv-hostile-"), None);
    let victim_inv = unique("inv-victim-");
    let victim = w.sandbox(&victim_inv, None);
    let base = rss_kib(&w.agent);

    // 1. Many HTTP/2 streams on one connection, each a 4 MiB request body
    //    with a known length: before, every one was buffered whole at once.
    const STREAMS: usize = 48;
    let body = w.mock.dir().join("big.json");
    let pad = "x".repeat(4 * 1024 * 1024 - 100);
    std::fs::write(
        &body,
        format!("{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"{pad}\"}}]}}"),
    )
    .unwrap();
    let mut args: Vec<String> = ["--http2", "--parallel", "--parallel-max", "100", "-sS"]
        .map(String::from)
        .to_vec();
    args.extend(["--max-time".into(), "240".into()]);
    for k in 0..STREAMS {
        if k > 0 {
            args.push("--next".into());
            args.extend([
                "--http2".into(),
                "-sS".into(),
                "--max-time".into(),
                "240".into(),
            ]);
        }
        args.extend(
            [
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\n",
                "-H",
                "content-type: application/json",
                "--data-binary",
            ]
            .map(String::from),
        );
        args.push(format!("@{}", body.display()));
        args.push("https://api.openai.com/v1/chat/completions".into());
    }
    let sampler_stop = std::sync::atomic::AtomicBool::new(false);
    let (codes, peak) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !sampler_stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(&w.agent));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = w.curl(&hostile, &argv);
        sampler_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, sampler.join().unwrap())
    });
    let ok = codes.lines().filter(|c| c.trim() == "200").count();
    assert_eq!(
        ok, STREAMS,
        "every large request still went through: {codes}"
    );
    // Buffering is bounded by the sandbox's budget (32 MiB by default):
    // 48 × 4 MiB = 192 MiB were in flight.
    let grown_mib = peak.saturating_sub(base) / 1024;
    assert!(
        grown_mib < 96,
        "agent RSS grew {grown_mib} MiB under {STREAMS} × 4 MiB h2 streams (base {base} KiB)"
    );
    assert!(
        w.agent
            .metric("egret_request_bodies_streamed_over_budget_total")
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        w.agent.metrics()
    );

    // 2. More idle connections than the sandbox may hold, kept open while
    //    another sandbox works.
    let script = clients_dir().join("conn_client.py");
    let mut held = {
        let mut c = w.command(&hostile, std::path::Path::new("/usr/bin/python3"));
        c.args([
            script.to_str().unwrap(),
            "many",
            "api.openai.com",
            "80",
            "--conns",
            "400",
            "--parallel",
            "100",
            "--path",
            "/json/10",
            "--host-header",
            "api.openai.com",
        ]);
        c
    }
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = std::io::BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let rep: serde_json::Value = serde_json::from_str(&line).expect("many report");
    assert!(
        rep["ok"].as_u64().unwrap() <= 200,
        "the sandbox held more than its 200 connections: {rep}"
    );
    assert!(
        w.agent
            .metric("egret_sandbox_limit_refusals_total{limit=\"connections\"}")
            .unwrap_or(0.0)
            >= 200.0
    );
    // The victim is served, promptly, while all that is held.
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let out = w.curl(
            &victim,
            &["-w", "\n%{http_code}", "https://api.openai.com/json/10"],
        );
        assert!(out.ends_with("\n200"), "{out}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "victim call took {:?}",
            t.elapsed()
        );
    }
    {
        use std::io::Write;
        writeln!(held.stdin.as_mut().unwrap()).unwrap();
    }
    let _ = held.wait();
    let recs = w.transactions(&victim_inv, 5);
    assert!(recs
        .iter()
        .all(|r| r.get_i64(sc::HTTP_RESPONSE_STATUS_CODE) == Some(200)));
}

#[test]
fn sandboxes_sharing_a_netns_keep_its_listeners_until_the_last_one_goes() {
    if !require_privileges("shared_netns_listeners") {
        return;
    }
    let port = free_port();
    let agent = Agent::start(AgentOptions {
        capture_ports: vec![port],
        extra_yaml: "gateways:\n- name: all\n  defaultPolicy: allow-all\n".into(),
        ..AgentOptions::default()
    });
    let ns = Netns::new();
    let _veth = Veth::new(&ns, "10.232.3.1", "10.232.3.2");
    let server = byte_server(&format!("10.232.3.1:{port}"));
    let url = format!("http://10.232.3.1:{}/4321", server.port());
    let fetch = |cg: &SandboxCgroup| -> String {
        let out = sandboxed(cg, Some(&ns), "curl")
            .args([
                "-sS",
                "-m",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                &url,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let holders = || -> Vec<u64> {
        let mut v: Vec<u64> = agent.status()["proxy"]["listener_holders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_u64().unwrap())
            .collect();
        v.sort();
        v
    };
    let (a, b) = (unique("sb"), unique("sb"));
    let (cga, cgb) = (agent.cgroup(&a), agent.cgroup(&b));
    agent.register(&a, Some(&ns), "inv-share-a");
    agent.register(&b, Some(&ns), "inv-share-b");
    assert_eq!(
        holders(),
        [1, 2],
        "the agent's own pair, and one shared by both"
    );
    assert_eq!(fetch(&cga), "200 4321");
    assert_eq!(fetch(&cgb), "200 4321");
    // One of them goes: the other keeps its listeners.
    agent.unregister(&a);
    assert_eq!(holders(), [1, 2 - 1]);
    assert_eq!(
        fetch(&cgb),
        "200 4321",
        "the remaining sandbox lost its listeners"
    );
    // The last one goes: they close.
    agent.unregister(&b);
    assert_eq!(holders(), [1]);
    // Registering into a netns that does not exist opens nothing.
    let out = agent.cli(&[
        "sandbox",
        "register",
        "--cgroup",
        &a,
        "--netns",
        "/run/netns/no-such-netns",
        "--invocation-id",
        "inv-x",
        &a,
    ]);
    assert!(!out.status.success());
    assert_eq!(holders(), [1]);
}

/// One word per port: `ok` or `refused` (sendto, then connect, both must
/// agree).
const UDP_PORTS_PY: &str = r#"
import socket, sys
for port in map(int, sys.argv[1:]):
    r = []
    for how in ("sendto", "connect"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if how == "sendto": s.sendto(b"x", ("127.0.0.1", port))
            else: s.connect(("127.0.0.1", port))
            r.append("ok")
        except PermissionError:
            r.append("refused")
        s.close()
    print(r[0] if r[0] == r[1] else "mixed")
"#;

#[test]
fn udp_is_refused_by_port_list_or_all_but_dns() {
    if !require_privileges("udp_ports") {
        return;
    }
    let ports = ["53", "443", "500", "4500", "51820"];
    for (yaml, expect) in [
        // blockQuic (default) only.
        ("", ["ok", "refused", "ok", "ok", "ok"]),
        // A VPN's ports too.
        (
            "  blockUdpPorts: [500, 4500, 51820]\n",
            ["ok", "refused", "refused", "refused", "refused"],
        ),
        // Nothing but DNS.
        (
            "  blockAllUdpExceptDns: true\n",
            ["ok", "refused", "refused", "refused", "refused"],
        ),
    ] {
        let agent = Agent::start(AgentOptions {
            extra_node_yaml: yaml.into(),
            ..AgentOptions::default()
        });
        let id = unique("sb");
        let cg = agent.cgroup(&id);
        agent.register(&id, None, "inv-udp-ports");
        let out = sandboxed(&cg, None, "python3")
            .args(["-c", UDP_PORTS_PY])
            .args(ports)
            .output()
            .unwrap();
        let words: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(words, expect, "{yaml:?}");
        let refused_other = expect[2..].iter().filter(|w| **w == "refused").count() as u64;
        assert_eq!(
            agent.kernel_stat("udp_refused"),
            2 * refused_other,
            "{yaml:?}"
        );
    }
}

/// Opens `n` TCP connections to `host port` and holds them; prints how many
/// connected and how many were refused by the kernel (EPERM), then waits
/// for a line on stdin and closes them.
const HOLD_PY: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, eperm = [], 0
for _ in range(n):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((host, port)); held.append(s)
    except PermissionError:
        eperm += 1; s.close()
print(len(held), eperm, flush=True)
sys.stdin.readline()
for s in held: s.close()
"#;

#[test]
fn one_sandbox_cannot_take_more_than_its_share_of_the_socket_maps() {
    if !require_privileges("socket_quota") {
        return;
    }
    let agent = Agent::start(AgentOptions {
        extra_node_yaml: "  maxSocketsPerSandbox: 50\n".into(),
        ..AgentOptions::default()
    });
    let server = byte_server("127.0.0.1:0");
    let (greedy, other) = (unique("sb"), unique("sb"));
    let (cgg, cgo) = (agent.cgroup(&greedy), agent.cgroup(&other));
    agent.register(&greedy, None, "inv-greedy");
    agent.register(&other, None, "inv-other");
    let hold = |cg: &SandboxCgroup, n: usize| {
        let mut c = sandboxed(cg, None, "python3");
        c.args([
            "-c",
            HOLD_PY,
            "127.0.0.1",
            &server.port().to_string(),
            &n.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        (child, v)
    };
    let (mut g, got) = hold(&cgg, 60);
    assert_eq!(got, [50, 10], "the greedy sandbox gets exactly its 50");
    // Another sandbox is not affected.
    let (mut o, got) = hold(&cgo, 20);
    assert_eq!(got, [20, 0]);
    assert_eq!(agent.kernel_stat("socket_quota_refused"), 10);
    let shares = agent.status()["sandbox_sockets"].clone();
    let refused: Vec<u64> = shares
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["refused"].as_u64().unwrap())
        .collect();
    assert_eq!(refused.first(), Some(&10), "{shares}");
    // Closing gives the share back.
    for c in [&mut g, &mut o] {
        use std::io::Write;
        writeln!(c.stdin.as_mut().unwrap()).unwrap();
        c.wait().unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (mut c, got) = hold(&cgg, 50);
        {
            use std::io::Write;
            writeln!(c.stdin.as_mut().unwrap()).unwrap();
            c.wait().unwrap();
        }
        if got == [50, 0] {
            break;
        }
        // Sockets of the first round may still be closing (FIN exchange).
        assert!(
            std::time::Instant::now() < deadline,
            "share not given back: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` TCP connects to a port nothing listens on (each socket closes at
/// once with a close event); prints how many were refused (RST).
const REFUSED_CONNECTS_PY: &str = r#"
import socket, sys, time
port, n, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + limit
refused = 0
for k in range(n):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        refused += 1
    s.close()
    if k % 1000 == 0 and time.monotonic() > end:
        break
print(refused)
"#;

#[test]
fn one_sandbox_cannot_take_the_close_ring_buffer() {
    if !require_privileges("ring_share") {
        return;
    }
    // The agent is stopped while a noisy sandbox closes more sockets than
    // the ring buffer holds (~35,000 events); a quiet sandbox closes a few
    // afterwards. With a share per sandbox the quiet one loses nothing.
    let agent = Agent::start(AgentOptions {
        extra_node_yaml: "  maxPendingClosesPerSandbox: 2000\n".into(),
        ..AgentOptions::default()
    });
    let dead_port = free_port();
    let (noisy, quiet) = (unique("sb"), unique("sb"));
    let (cgn, cgq) = (agent.cgroup(&noisy), agent.cgroup(&quiet));
    agent.register(&noisy, None, "inv-noisy");
    let quiet_inv = unique("inv-quiet-");
    agent.register(&quiet, None, &quiet_inv);
    let pid = nix::unistd::Pid::from_raw(agent.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let run = |cg: &SandboxCgroup, n: usize| -> usize {
        let out = sandboxed(cg, None, "python3")
            .args([
                "-c",
                REFUSED_CONNECTS_PY,
                &dead_port.to_string(),
                &n.to_string(),
                "180",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let noisy_n = run(&cgn, 40_000);
    let quiet_n = run(&cgq, 50);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(noisy_n >= 36_000, "only {noisy_n} noisy closes");
    assert_eq!(quiet_n, 50);
    let recs = agent.wait_records("the quiet sandbox's flows", |r| {
        flows_of(r, &quiet_inv).len() >= 50
    });
    assert_eq!(flows_of(&recs, &quiet_inv).len(), 50);
    let st = agent.status();
    assert_eq!(
        st["kernel"]["ringbuf_drops"].as_u64(),
        Some(0),
        "{}",
        st["kernel"]
    );
    let shares = st["sandbox_sockets"].as_array().unwrap().clone();
    let dropped: u64 = shares
        .iter()
        .map(|s| s["closes_dropped"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        dropped >= (noisy_n - 2000) as u64,
        "noisy sandbox's drops not counted for it: {shares:?}"
    );
    assert_eq!(
        st["kernel"]["closes_over_share"].as_u64(),
        Some(dropped),
        "{}",
        st["kernel"]
    );
}

#[test]
fn egret_adds_its_sock_ops_flags_without_clearing_another_programs() {
    if !require_privileges("sock_ops_flags") {
        return;
    }
    use aya::programs::{CgroupAttachMode, SockOps};
    let agent = Agent::start(AgentOptions::default());
    let server = byte_server("127.0.0.1:0");
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, "inv-flags");
    // Another tool's sock_ops program on the sandbox's own cgroup: it runs
    // before egret's (attached at the sandbox root) and asks for RTT
    // callbacks; egret's then asks for state callbacks.
    let pins = std::path::PathBuf::from("/sys/fs/bpf").join(unique("egprobe"));
    std::fs::create_dir_all(&pins).unwrap();
    let mut ebpf = aya::EbpfLoader::new()
        .default_map_pin_directory(&pins)
        .load(egret::bpf::object())
        .expect("load the object");
    let rtts: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(ebpf.take_map("EGRET_PROBE_RTT").unwrap()).unwrap();
    let prog: &mut SockOps = ebpf
        .program_mut("egret_probe_rtt")
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    let cgfd = std::fs::File::open(&cg.path).unwrap();
    let link = prog.attach(&cgfd, CgroupAttachMode::Single).unwrap();
    let out = sandboxed(&cg, None, "python3")
        .arg(clients_dir().join("tcp_client.py"))
        .arg("127.0.0.1")
        .arg(server.port().to_string())
        .args(["--request-bytes=100", "--response-bytes=200000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = rtts.get(&0, 0).unwrap();
    assert!(n > 0, "the other program's RTT callbacks were switched off");
    // egret's own callbacks still work: the flow record came from its
    // state callback.
    let recs = agent.wait_records("the flow", |r| !flows_of(r, "inv-flags").is_empty());
    assert_eq!(
        i(flows_of(&recs, "inv-flags")[0], sc::L4_BYTES_SANDBOX_RX),
        200_000
    );
    prog.detach(link).unwrap();
    drop(ebpf);
    egret::bpf::clear_pins(&pins);
    let _ = std::fs::remove_dir(&pins);
}
