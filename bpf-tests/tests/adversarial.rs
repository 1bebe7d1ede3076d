//! Adversarial sandboxes: a sandbox (root inside its cgroup, in the host
//! netns or its own) that tries to reach the agent's own endpoints, to use
//! the proxy as an open proxy, to get around capture (IPv6, QUIC, other
//! ports, split request lines), to forge attribution with PROXY headers,
//! or to exhaust the agent with oversized heads, bodies and compression
//! bombs. Each attempt is refused or bounded, and each test builds its own
//! world.
use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use bpf_tests::{world::*, *};
use egret::{record::Record, semconv as sc};
use serde_json::Value;

fn i(rec: &Record, key: &str) -> i64 {
    rec.get_i64(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", rec.to_json_line()))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn sandboxes_cannot_reach_the_admin_endpoint_or_the_attribution_api() {
    if !require_privileges("admin_isolation") {
        return;
    }
    let ns = Netns::new();
    let _veth = Veth::new(&ns, "10.231.1.1", "10.231.1.2");

    // Admin on loopback (the default): a sandbox sharing the host netns is
    // refused by connect4/6; the host itself still reads it.
    let agent = Agent::start(AgentOptions::default());
    let port = agent.admin_port;
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, "inv-admin");
    let words = connect_words(
        sandboxed(&cg, None, "python3"),
        &[("127.0.0.1", port), ("::ffff:127.0.0.1", port)],
        false,
    );
    assert_eq!(
        words,
        ["eperm", "eperm"],
        "sandbox reached the admin listener"
    );
    assert!(agent.kernel_stat("admin_refused") >= 2);
    // A sandbox in its own netns: its loopback is its own, and the node's
    // address does not lead to a loopback listener.
    let nid = unique("sb");
    let ncg = agent.cgroup(&nid);
    agent.register(&nid, Some(&ns), "inv-admin-ns");
    let words = connect_words(
        sandboxed(&ncg, Some(&ns), "python3"),
        &[("127.0.0.1", port), ("10.231.1.1", port)],
        false,
    );
    assert_eq!(words, ["refused", "refused"]);
    // The attribution API refuses sandbox callers from any netns (the
    // socket is reachable by path; SO_PEERCRED + cgroup decide).
    for netns in [None, Some(&ns)] {
        let c = if netns.is_some() { &ncg } else { &cg };
        let out = sandboxed(c, netns, egret_bin().to_str().unwrap())
            .arg("--config")
            .arg(&agent.config)
            .args(["sandbox", "list"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "sandbox listed sandboxes");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("403") && err.contains("sandbox"), "{err}");
    }
    assert!(
        agent.status()["ready"] == true,
        "the host still reads /status"
    );
    drop(agent);

    // Admin on a node address: refused from every sandbox netns that can
    // route to it — while a non-sandbox process in the same netns connects.
    let agent = Agent::start(AgentOptions {
        admin_ip: Some("10.231.1.1".into()),
        ..AgentOptions::default()
    });
    let port = agent.admin_port;
    let nid = unique("sb");
    let ncg = agent.cgroup(&nid);
    agent.register(&nid, Some(&ns), "inv-admin-node");
    let words = connect_words(
        sandboxed(&ncg, Some(&ns), "python3"),
        &[("10.231.1.1", port)],
        false,
    );
    assert_eq!(
        words,
        ["eperm"],
        "sandbox netns reached the node admin address"
    );
    let words = connect_words(ns.command("python3"), &[("10.231.1.1", port)], false);
    assert_eq!(words, ["connected"], "the route itself works");
    assert_eq!(agent.kernel_stat("admin_refused"), 1);
}

#[test]
fn the_redirect_listener_is_not_an_open_proxy() {
    if !require_privileges("open_proxy") {
        return;
    }
    let ns = Netns::new();
    let w = World::with(WorldOptions {
        plain_ports: vec![80],
        ..WorldOptions::default()
    });
    let agent = &w.agent;
    let lp = agent.listen_port;
    let inv = unique("inv-direct-");
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, &inv);
    let nid = unique("sb");
    let ncg = agent.cgroup(&nid);
    agent.register(&nid, Some(&ns), &inv);
    // Straight at the listener, with a request for a provider: from a
    // sandbox (host netns, v4 and v6), from a sandbox in its own netns (its
    // own listener there), and from a process that is no sandbox at all.
    let pairs = [("127.0.0.1", lp), ("::1", lp)];
    let mut words = connect_words(sandboxed(&cg, None, "python3"), &pairs, true);
    words.extend(connect_words(
        sandboxed(&ncg, Some(&ns), "python3"),
        &pairs,
        true,
    ));
    words.extend(connect_words(Command::new("python3"), &pairs, true));
    assert_eq!(
        words,
        vec!["got:0"; 6],
        "the listener answered an unlinked connection"
    );
    let st = agent.status();
    assert_eq!(st["proxy"]["refused_unlinked"], 6, "{}", st["proxy"]);
    // The same request through the kernel's redirect is served.
    let ok = conn_client(&w, &cg, &["halfclose", "api.openai.com", "80"]);
    assert_eq!(ok["status"], 200, "{ok}");
    let recs = w.transactions(&inv, 1);
    assert_eq!(recs.len(), 1, "only the redirected request was served");
}

/// Sends UDP datagrams to 443 on each address given; prints `eperm` or `sent`.
const UDP_PY: &str = r#"
import socket, sys
for host in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.sendto(b"quic?", (host, 443)); print("sent")
    except PermissionError:
        print("eperm")
"#;

/// TLS over an AF_INET6 socket to a v4-mapped address; prints the status.
const MAPPED_TLS_PY: &str = r#"
import os, socket, ssl, sys
ip, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(("::ffff:" + ip, port))
t = ctx.wrap_socket(s, server_hostname="api.openai.com")
t.sendall(b"GET /json/12 HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n")
got = b""
while True:
    c = t.recv(65536)
    if not c: break
    got += c
print(got.split(b"\r\n", 1)[0].decode())
"#;

#[test]
fn ipv6_v4_mapped_quic_and_extra_ports_do_not_bypass_capture() {
    if !require_privileges("bypass") {
        return;
    }
    let v6_port = free_port();
    let ns = Netns::new();
    let veth = Veth::new(&ns, "10.231.3.1", "10.231.3.2");
    veth.add_v6(&ns, "fd00:231:3::1", "fd00:231:3::2");
    let l4_port = free_port();
    let w = World::with(WorldOptions {
        tls_ports: vec![443, 8443],
        mock_args: vec!["--listen".into(), format!("[::1]:{v6_port}")],
        agent: AgentOptions {
            capture_ports: vec![v6_port, l4_port],
            ..AgentOptions::default()
        },
        ..WorldOptions::default()
    });
    let inv = unique("inv-bypass-");
    let cg = w.sandbox(&inv, None);

    // The provider's name resolving to ::1, on a captured port.
    let hosts6 = w.hosts.with_file_name("hosts6");
    std::fs::write(&hosts6, "::1 api.openai.com\n").unwrap();
    let out = w
        .command_with_hosts(&cg, Path::new("/usr/bin/curl"), &hosts6)
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{remote_ip}",
        ])
        .arg(format!("https://api.openai.com:{v6_port}/json/11"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 ::1",
        "{}",
        text(&out)
    );
    // A non-standard port listed in capturePorts.
    let code = w.curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://api.openai.com:8443/json/13",
        ],
    );
    assert_eq!(code, "200");
    // An IPv6 socket to the v4-mapped address of a captured port.
    let out = w
        .command(&cg, Path::new("/usr/bin/python3"))
        .args(["-c", MAPPED_TLS_PY, &w.ip, "443"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "HTTP/1.1 200 OK",
        "{}",
        text(&out)
    );
    let recs = w.transactions(&inv, 3);
    let by_size = |n: &str| -> &Record {
        recs.iter()
            .find(|r| r.get_str(sc::URL_PATH) == Some(&format!("/json/{n}")))
            .unwrap_or_else(|| panic!("no /json/{n} record"))
    };
    assert_eq!(i(by_size("11"), sc::SERVER_PORT), i64::from(v6_port));
    assert_eq!(i(by_size("13"), sc::SERVER_PORT), 8443);
    assert_eq!(i(by_size("12"), sc::SERVER_PORT), 443);
    let recs = w.agent.wait_records("v6 flow", |r| {
        flows_of(r, &inv)
            .iter()
            .any(|f| f.get_str(sc::SERVER_ADDRESS) == Some("::1"))
    });
    let f6 = flows_of(&recs, &inv)
        .into_iter()
        .find(|f| f.get_str(sc::SERVER_ADDRESS) == Some("::1"))
        .unwrap();
    assert_eq!(
        f6.get_bool(sc::L4_REDIRECTED),
        Some(true),
        "{}",
        f6.to_json_line()
    );

    // A sandbox in its own netns, over IPv6 on the veth, to a captured port.
    let server = byte_server(&format!("[fd00:231:3::1]:{l4_port}"));
    let ninv = unique("inv-bypass-ns-");
    let nid = unique("sb");
    let ncg = w.agent.cgroup(&nid);
    w.agent.register(&nid, Some(&ns), &ninv);
    let out = sandboxed(&ncg, Some(&ns), "python3")
        .arg(clients_dir().join("tcp_client.py"))
        .args(["fd00:231:3::1", &server.port().to_string()])
        .args(["--request-bytes=100", "--response-bytes=1000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let recs = w
        .agent
        .wait_records("netns v6 flow", |r| flows_of(r, &ninv).len() == 1);
    let f = flows_of(&recs, &ninv)[0];
    assert_eq!(
        f.get_bool(sc::L4_REDIRECTED),
        Some(true),
        "{}",
        f.to_json_line()
    );
    assert_eq!(f.get_str(sc::SERVER_ADDRESS), Some("fd00:231:3::1"));
    // 1000 payload bytes (+1 while the kernel's bytes_received still
    // counts the peer's FIN; being fixed on main).
    assert!(
        (1000..=1001).contains(&i(f, sc::L4_BYTES_SANDBOX_RX)),
        "{}",
        f.to_json_line()
    );

    // QUIC (UDP/443) is refused over v4, v6 and v4-mapped v6, in both netns.
    let before = w.agent.kernel_stat("quic_refused");
    let targets = ["127.0.0.1", "::1", "::ffff:127.0.0.1", &w.ip];
    let mut cmd = sandboxed(&cg, None, "python3");
    cmd.args(["-c", UDP_PY]).args(targets);
    let host = cmd.output().unwrap();
    let mut cmd = sandboxed(&ncg, Some(&ns), "python3");
    cmd.args(["-c", UDP_PY])
        .args(["10.231.3.1", "fd00:231:3::1"]);
    let inner = cmd.output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&host.stdout)
            .lines()
            .collect::<Vec<_>>(),
        vec!["eperm"; 4],
        "{}",
        text(&host)
    );
    assert_eq!(
        String::from_utf8_lossy(&inner.stdout)
            .lines()
            .collect::<Vec<_>>(),
        vec!["eperm"; 2],
        "{}",
        text(&inner)
    );
    assert_eq!(w.agent.kernel_stat("quic_refused"), before + 6);
}

#[test]
fn a_request_line_split_across_segments_is_still_http_and_still_policed() {
    if !require_privileges("split_request") {
        return;
    }
    let w = World::with(WorldOptions {
        plain_ports: vec![80],
        ..WorldOptions::default()
    });
    let inv = unique("inv-split-");
    let cg = w.sandbox(&inv, None);
    // "G", a pause, then the rest: the first segment alone looks like
    // nothing. It must not be spliced past the policy to a denied host.
    const SPLIT_PY: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=20)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b"G"); time.sleep(0.3)
s.sendall(b"ET /json/10 HTTP/1.1\r\nHost: denied.example\r\nConnection: close\r\n\r\n")
got = b""
while True:
    c = s.recv(65536)
    if not c: break
    got += c
print(got.split(b"\r\n", 1)[0].decode())
"#;
    let out = w.run(
        &cg,
        Path::new("/usr/bin/python3"),
        &["-c", SPLIT_PY, "denied.example"],
    );
    assert_eq!(out.trim(), "HTTP/1.1 403 Forbidden", "{out}");
    let rec = &w.transactions(&inv, 1)[0];
    assert_eq!(
        rec.get_bool(sc::POLICY_DENIED),
        Some(true),
        "{}",
        rec.to_json_line()
    );
}

/// A PROXY protocol v2 header (PROXY, TCP over IPv4) whose TLVs claim
/// invocation `inv` (egret's TLV 0xE0) and agent name `name` (0xE3).
fn proxy_v2_header(inv: &str, name: &str) -> Vec<u8> {
    let mut tlvs = Vec::new();
    for (t, v) in [(0xE0u8, inv), (0xE3, name)] {
        tlvs.push(t);
        tlvs.extend_from_slice(&(v.len() as u16).to_be_bytes());
        tlvs.extend_from_slice(v.as_bytes());
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // v2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[10, 9, 9, 9, 203, 0, 113, 10]);
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h.extend_from_slice(&tlvs);
    h
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn proxy_protocol_headers_from_a_sandbox_carry_no_attribution() {
    if !require_privileges("proxy_forgery") {
        return;
    }
    let w = World::with(WorldOptions {
        plain_ports: vec![80],
        ..WorldOptions::default()
    });
    let inv = unique("inv-honest-");
    let forged = unique("inv-forged-");
    let cg = w.sandbox(&inv, None);
    // v2 header with egret's attribution TLVs, then a request: on a
    // captured port it is not TLS or HTTP, so it is spliced unchanged (the
    // default gateway's nonHttp: passthrough) — never parsed.
    let v2 = hex(&proxy_v2_header(&forged, "forged-agent"));
    let r = conn_client(&w, &cg, &["raw", "api.openai.com", "80", "--hex", &v2]);
    eprintln!("PROXY v2 on a captured port: {r}");
    // v1 text header: it starts like a request line, so hyper sees a
    // malformed request and answers 400 itself (recorded as such, under the
    // kernel's attribution).
    let v1 = hex(format!("PROXY TCP4 10.9.9.9 203.0.113.10 40000 80 {forged}\r\n").as_bytes());
    let r1 = conn_client(&w, &cg, &["raw", "api.openai.com", "80", "--hex", &v1]);
    eprintln!("PROXY v1 on a captured port: {r1}");
    assert!(
        r1["got"]
            .as_str()
            .is_some_and(|g| g.is_empty() || g.starts_with("HTTP/1.1 400")),
        "{r1}"
    );
    // Over TLS too (the header before the ClientHello).
    let out = w
        .command(&cg, Path::new("/usr/bin/python3"))
        .arg(clients_dir().join("conn_client.py"))
        .args(["raw", "api.openai.com", "443", "--hex", &v2])
        .output()
        .unwrap();
    eprintln!("PROXY v2 on 443: {}", text(&out));
    // An honest request afterwards, on a new connection.
    let ok = conn_client(&w, &cg, &["halfclose", "api.openai.com", "80"]);
    assert_eq!(ok["status"], 200, "{ok}");

    let recs = w.agent.wait_records("flows of every attempt", |r| {
        flows_of(r, &inv).len() >= 4 && txns(r, &inv).len() == 2
    });
    for r in &recs {
        let line = r.to_json_line();
        assert!(
            !line.contains(&forged),
            "forged attribution recorded: {line}"
        );
        assert!(
            !line.contains("forged-agent"),
            "forged attribution recorded: {line}"
        );
    }
    for f in flows_of(&recs, &inv) {
        assert_eq!(
            f.get_str(sc::AGENT_NAME).map(|n| n.starts_with("agent-sb")),
            Some(true)
        );
    }
    // The v1 header's connection: a malformed request, the honest one: 200.
    let ts = txns(&recs, &inv);
    let malformed: Vec<_> = ts
        .iter()
        .filter(|t| t.get_str(sc::ERROR_TYPE) == Some("malformed_request"))
        .collect();
    assert_eq!(malformed.len(), 1, "{ts:?}");
    assert_eq!(
        malformed[0].get_i64(sc::HTTP_RESPONSE_STATUS_CODE),
        Some(400)
    );
    for t in &ts {
        assert_eq!(t.get_str(sc::ATTRIBUTION_SOURCE), Some("kernel"));
    }
}

/// Samples the agent's RSS every 100 ms while `f` runs; returns f's result
/// and the peak (KiB).
fn peak_rss<T>(agent: &Agent, f: impl FnOnce() -> T) -> (T, u64) {
    let pid = agent.pid().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(proc_rss_kib(pid).0);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        let out = f();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, sampler.join().unwrap())
    })
}

#[test]
fn oversized_heads_and_bodies_and_compression_bombs_are_bounded() {
    if !require_privileges("oversized") {
        return;
    }
    let w = World::with(WorldOptions {
        plain_ports: vec![80],
        agent: AgentOptions {
            capture_ports: vec![8080],
            ..AgentOptions::default()
        },
        ..WorldOptions::default()
    });
    let faults = FaultServer::start(&w.ip, 8080);
    let inv = unique("inv-big-");
    let cg = w.sandbox(&inv, None);
    w.curl(&cg, &["-o", "/dev/null", "http://api.openai.com/json/10"]);
    let (rss0, _) = w.agent.rss_kib();

    // A 1 MiB header (the head limit is 256 KiB): 431 or closed.
    let (heads, peak_heads) = peak_rss(&w.agent, || {
        (0..5)
            .map(|_| {
                conn_client(
                    &w,
                    &cg,
                    &["bigheader", "api.openai.com", "80", "--bytes", "1048576"],
                )
            })
            .collect::<Vec<Value>>()
    });
    for h in &heads {
        let line = h["status_line"].as_str().unwrap();
        assert!(line.is_empty() || line.starts_with("HTTP/1.1 431"), "{h}");
    }
    // Over HTTP/2 (header list limit); curl reads the header from a file
    // (too long for one argument).
    let hfile = std::env::temp_dir().join(unique("egret-bighdr-"));
    std::fs::write(&hfile, format!("x-big: {}\n", "h".repeat(300 * 1024))).unwrap();
    let out = w
        .command(&cg, Path::new("/usr/bin/curl"))
        .args([
            "-sS",
            "--http2",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("-H")
        .arg(format!("@{}", hfile.display()))
        .arg("https://api.openai.com/json/10")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&hfile);
    let h2_code = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "h2 300 KiB header: {h2_code} {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(h2_code == "431" || !out.status.success(), "{}", text(&out));

    // 200 MB uploaded to /echo (known length, far above the 4 MiB
    // whole-body limit): streamed both ways, never buffered.
    let file = std::env::temp_dir().join(unique("egret-upload-"));
    let f = std::fs::File::create(&file).unwrap();
    f.set_len(200_000_000).unwrap();
    drop(f);
    let t0 = Instant::now();
    let (up, peak_upload) = peak_rss(&w.agent, || {
        w.curl(
            &cg,
            &[
                "--max-time",
                "120",
                "-X",
                "POST",
                "-T",
                file.to_str().unwrap(),
                "-H",
                "content-type: application/octet-stream",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_upload} %{size_download}",
                "http://api.openai.com/echo",
            ],
        )
    });
    let upload_took = t0.elapsed();
    let _ = std::fs::remove_file(&file);
    assert_eq!(up, "200 200000000 200000000", "{up}");

    // Compression bombs (256 MiB of zeros in a few hundred KiB of gzip),
    // as an event stream and as JSON: the client gets the bytes as sent,
    // the parser stops at its bound and says why.
    let body =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (bombs, peak_bomb) = peak_rss(&w.agent, || {
        ["sse", "json"].map(|ct| {
            w.curl(
                &cg,
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{size_download}",
                    "-H",
                    "content-type: application/json",
                    "-d",
                    body,
                    &format!("http://api.openai.com:8080/v1/chat/completions?ct={ct}"),
                ],
            )
        })
    });
    for b in &bombs {
        assert_eq!(
            b,
            &format!("200 {}", faults.bomb_bytes),
            "client got every byte"
        );
    }
    let recs = w.transactions(&inv, 4);
    let echo = recs
        .iter()
        .find(|r| r.get_str(sc::URL_PATH) == Some("/echo"))
        .unwrap();
    assert_eq!(i(echo, sc::REQ_BYTES), 200_000_000);
    assert_eq!(i(echo, sc::RESP_BYTES), 200_000_000);
    let bomb_recs: Vec<&Record> = recs
        .iter()
        .filter(|r| r.get_str(sc::URL_PATH) == Some("/v1/chat/completions"))
        .collect();
    assert_eq!(bomb_recs.len(), 2);
    let mut errors = Vec::new();
    for r in &bomb_recs {
        let e = r
            .get_str(sc::PARSE_ERROR)
            .unwrap_or_else(|| panic!("no parse error on {}", r.to_json_line()));
        errors.push(e.to_owned());
        assert_eq!(i(r, sc::RESP_BYTES), faults.bomb_bytes as i64);
        // The capture decoded up to its 64 KiB cap and stopped there.
        assert_eq!(r.get_str(sc::RESPONSE_CONTENT_ENCODING), Some("gzip"));
        assert_eq!(r.get_str(sc::RESPONSE_BODY).map(str::len), Some(64 * 1024));
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(true));
        assert_eq!(r.get_bool(sc::RESPONSE_BODY_B64), Some(false));
        assert!(r.get(sc::RESPONSE_BODY_DECODE_ERROR).is_none());
    }
    errors.sort();
    // The stream decodes until the 64 MiB decode cap; the JSON body is cut
    // at the 4 MiB JSON cap first.
    assert_eq!(errors, ["body_too_large", "decoded_too_large"]);
    let (rss1, _) = w.agent.rss_kib();
    eprintln!(
        "MEASURED oversized: RSS {rss0} KiB before; peak {peak_heads} KiB with 1 MiB heads \
         (answer {:?}, h2: {h2_code}); \
         peak {peak_upload} KiB during the 200 MB upload ({upload_took:?}); peak {peak_bomb} KiB \
         during the bombs (parse errors {errors:?}); {rss1} KiB after",
        heads[0]["status_line"]
    );
    for (what, peak) in [
        ("oversized heads", peak_heads),
        ("200 MB upload", peak_upload),
        ("gzip bombs", peak_bomb),
    ] {
        assert!(
            peak < rss0 + 96 * 1024,
            "{what}: RSS peaked at {peak} KiB from {rss0} KiB"
        );
    }
}
