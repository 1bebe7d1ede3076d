//! The kernel half against the kernel's own numbers: real cgroups, netns,
//! veths, clients. Each test builds and tears down its own world.
use std::{process::Command, time::Duration};

use bpf_tests::*;
use egret::{record::Record, semconv as sc};

fn py_client(
    cg: &SandboxCgroup,
    ns: Option<&Netns>,
    host: &str,
    port: u16,
    req: usize,
    resp: usize,
) -> Command {
    let mut c = sandboxed(cg, ns, "python3");
    c.arg(clients_dir().join("tcp_client.py"))
        .arg(host)
        .arg(port.to_string())
        .arg(format!("--request-bytes={req}"))
        .arg(format!("--response-bytes={resp}"))
        .arg("--hold");
    c
}

fn one_flow<'a>(recs: &'a [Record], inv: &str) -> &'a Record {
    let f = flows_of(recs, inv);
    assert_eq!(f.len(), 1, "expected one flow for {inv}, got {f:?}");
    f[0]
}

fn i(rec: &Record, key: &str) -> i64 {
    rec.get_i64(key)
        .unwrap_or_else(|| panic!("{key} missing in {}", rec.to_json_line()))
}

/// Python client, held open so `ss -ti` can read the socket: the flow
/// record's payload bytes equal the client's own counts and the kernel's.
fn python_bytes_match(agent: &Agent, ns: Option<&Netns>, host: &str, port: u16, tag: &str) {
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    let inv = format!("inv-{tag}-{id}");
    agent.register(&id, ns, &inv);
    let mut client = HeldClient::spawn(py_client(&cg, ns, host, port, 333, 1_500_000));
    let first = client.next_report();
    client.say("more 1234 600000");
    let second = client.next_report();
    let local_port = first["local_port"].as_u64().unwrap() as u16;
    let (ss_sent, ss_received) = ss_counters(ns, local_port);
    let sent = second["sent"].as_i64().unwrap();
    let received = second["received"].as_i64().unwrap();
    assert_eq!(sent, 333 + 1234);
    assert_eq!(received, 2_100_000);
    assert_eq!(
        (ss_sent as i64, ss_received as i64),
        (sent, received),
        "ss -ti disagrees with the client"
    );
    client.finish();
    let recs = agent.wait_records("python flow", |r| flows_of(r, &inv).len() == 1);
    let f = one_flow(&recs, &inv);
    assert_eq!(i(f, sc::L4_BYTES_SANDBOX_TX), sent, "{}", f.to_json_line());
    assert_eq!(
        i(f, sc::L4_BYTES_SANDBOX_RX),
        received,
        "{}",
        f.to_json_line()
    );
    assert_eq!(
        f.get_str(sc::AGENT_NAME),
        Some(format!("agent-{id}").as_str())
    );
    assert_eq!(i(f, sc::SERVER_PORT), i64::from(port));
    assert_eq!(f.get_str(sc::SERVER_ADDRESS), Some(host));
}

/// curl: the flow record equals curl's own request/response byte counts.
fn curl_bytes_match(agent: &Agent, ns: Option<&Netns>, host: &str, port: u16, tag: &str) {
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    let inv = format!("inv-curl-{tag}-{id}");
    agent.register(&id, ns, &inv);
    // The byte server answers the request line "GET 1048577 / HTTP/1.1"
    // with a 1048577-byte body.
    let out = sandboxed(&cg, ns, "curl")
        .args(["-sS", "-o", "/dev/null", "-X", "GET 1048577"])
        .args([
            "-w",
            "%{size_request} %{size_upload} %{size_header} %{size_download}",
        ])
        .args(["--max-time", "30"])
        .arg(format!("http://{host}:{port}/"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let nums: Vec<i64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(
        nums.len(),
        4,
        "curl said {text:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (tx, rx) = (nums[0] + nums[1], nums[2] + nums[3]);
    assert!(
        rx >= 1_048_577,
        "curl got {rx} bytes ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = agent.wait_records("curl flow", |r| flows_of(r, &inv).len() == 1);
    let f = one_flow(&recs, &inv);
    assert_eq!(i(f, sc::L4_BYTES_SANDBOX_TX), tx, "{}", f.to_json_line());
    assert_eq!(i(f, sc::L4_BYTES_SANDBOX_RX), rx, "{}", f.to_json_line());
}

#[test]
fn payload_bytes_equal_client_and_kernel_counts_on_loopback() {
    if !require_privileges("payload_bytes_loopback") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    let server = byte_server("127.0.0.1:0");
    python_bytes_match(&agent, None, "127.0.0.1", server.port(), "lo");
    curl_bytes_match(&agent, None, "127.0.0.1", server.port(), "lo");
}

#[test]
fn payload_bytes_equal_client_and_kernel_counts_across_veth() {
    if !require_privileges("payload_bytes_veth") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    let ns = Netns::new();
    let n = (std::process::id() % 200) + 20;
    let host_ip = format!("10.97.{n}.1");
    let ns_ip = format!("10.97.{n}.2");
    let _veth = Veth::new(&ns, &host_ip, &ns_ip);
    let server = byte_server(&format!("{host_ip}:0"));
    python_bytes_match(&agent, Some(&ns), &host_ip, server.port(), "veth");
    curl_bytes_match(&agent, Some(&ns), &host_ip, server.port(), "veth");
}

#[test]
fn fifty_sandboxes_with_identical_addresses_are_never_mixed_up() {
    if !require_privileges("fifty_sandboxes") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    const N: usize = 50;
    let mut world = Vec::new();
    for k in 0..N {
        let ns = Netns::new();
        // The same server address in every netns.
        let server = ns
            .command("python3")
            .args(["-c", SERVER_PY, "127.0.0.1", "9099"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("server");
        let id = unique("sb");
        let cg = agent.cgroup(&id);
        let inv = format!("inv-fifty-{k}-{id}");
        agent.register(&id, Some(&ns), &inv);
        world.push((ns, server, cg, inv));
    }
    for (_, server, _, _) in world.iter_mut() {
        // Wait for each server's "ready" line.
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    // Two connections per sandbox, all at once; sizes encode the sandbox.
    let mut clients = Vec::new();
    for (k, (ns, _, cg, _)) in world.iter().enumerate() {
        for c in 0..2 {
            let mut cmd = sandboxed(cg, Some(ns), "python3");
            cmd.arg(clients_dir().join("tcp_client.py"))
                .args(["127.0.0.1", "9099"])
                .arg(format!("--request-bytes={}", 1000 + k))
                .arg(format!("--response-bytes={}", 5000 + k * 10 + c));
            clients.push(cmd.stdout(std::process::Stdio::null()).spawn().unwrap());
        }
    }
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    let recs = agent.wait_records("100 flows", |r| {
        world
            .iter()
            .all(|(_, _, _, inv)| flows_of(r, inv).len() == 2)
    });
    for (k, (_, _, _, inv)) in world.iter().enumerate() {
        let mut rx: Vec<i64> = flows_of(&recs, inv)
            .iter()
            .map(|f| {
                assert_eq!(
                    i(f, sc::L4_BYTES_SANDBOX_TX),
                    1000 + k as i64,
                    "{}",
                    f.to_json_line()
                );
                i(f, sc::L4_BYTES_SANDBOX_RX)
            })
            .collect();
        rx.sort();
        assert_eq!(
            rx,
            vec![5000 + k as i64 * 10, 5000 + k as i64 * 10 + 1],
            "sandbox {k}"
        );
    }
    for (_, mut server, _, _) in world {
        let _ = server.kill();
        let _ = server.wait();
    }
}

/// A byte server for `python3 -c`: argv host port; prints "ready".
const SERVER_PY: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(128)
print("ready", flush=True)
def serve(c):
    f = c.makefile("rb")
    while True:
        line = f.readline()
        if not line: break
        n = int(line.split()[-1]); c.sendall(b"x" * n)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn reregistration_mid_connection_keeps_old_sockets_on_the_old_invocation() {
    if !require_privileges("reregistration") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    let server = byte_server("127.0.0.1:0");
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, "inv-first");
    let mut old = HeldClient::spawn(py_client(&cg, None, "127.0.0.1", server.port(), 100, 1000));
    old.next_report();
    agent.register(&id, None, "inv-second");
    let mut new = HeldClient::spawn(py_client(&cg, None, "127.0.0.1", server.port(), 200, 2000));
    new.next_report();
    // The old socket keeps talking after the re-registration.
    old.say("more 50 500");
    old.next_report();
    old.finish();
    new.finish();
    let recs = agent.wait_records("both flows", |r| {
        flows_of(r, "inv-first").len() == 1 && flows_of(r, "inv-second").len() == 1
    });
    let first = one_flow(&recs, "inv-first");
    assert_eq!(i(first, sc::L4_BYTES_SANDBOX_TX), 150);
    assert_eq!(i(first, sc::L4_BYTES_SANDBOX_RX), 1500);
    let second = one_flow(&recs, "inv-second");
    assert_eq!(i(second, sc::L4_BYTES_SANDBOX_TX), 200);
    assert_eq!(i(second, sc::L4_BYTES_SANDBOX_RX), 2000);
}

/// Python client that reports what getpeername says and what the server saw.
const PEER_PY: &str = r#"
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(20)
s.connect((host, port))
s.sendall(b"whoami\n")
data = b""
while not data.endswith(b"\n"):
    chunk = s.recv(4096)
    if not chunk: break
    data += chunk
print(json.dumps({"peer": list(s.getpeername()[:2]), "server_saw": data.decode().strip()}))
s.close()
"#;

/// Server that answers each line with the local address the connection
/// arrived on — proof of which destination the proxy dialled.
const WHOAMI_PY: &str = r#"
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(16)
print("ready", flush=True)
def serve(c):
    f = c.makefile("rb")
    while f.readline():
        a = c.getsockname(); c.sendall(("%s %d\n" % (a[0], a[1])).encode())
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

fn start_whoami(ns: Option<&Netns>, host: &str, port: u16) -> std::process::Child {
    let mut cmd = match ns {
        Some(ns) => ns.command("python3"),
        None => Command::new("python3"),
    };
    let mut child = cmd
        .args(["-c", WHOAMI_PY, host, &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("whoami server");
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

fn check_redirect(agent: &Agent, ns: Option<&Netns>, host: &str, port: u16) {
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    let inv = format!("inv-redirect-{id}");
    agent.register(&id, ns, &inv);
    let out = sandboxed(&cg, ns, "python3")
        .args(["-c", PEER_PY, host, &port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // getpeername shows the original peer, not the agent's listener.
    assert_eq!(v["peer"], serde_json::json!([host, port]), "{v}");
    // The server was reached at the original destination, via the agent.
    assert_eq!(v["server_saw"], format!("{host} {port}"), "{v}");
    let recs = agent.wait_records("redirected flow", |r| flows_of(r, &inv).len() == 1);
    let f = one_flow(&recs, &inv);
    assert_eq!(
        f.get_bool(sc::L4_REDIRECTED),
        Some(true),
        "{}",
        f.to_json_line()
    );
    assert_eq!(f.get_str(sc::SERVER_ADDRESS), Some(host));
    assert_eq!(i(f, sc::SERVER_PORT), i64::from(port));
    assert_eq!(i(f, sc::L4_BYTES_SANDBOX_TX), 7);
}

#[test]
fn redirect_and_original_destination_ipv4_ipv6_and_inside_a_netns() {
    if !require_privileges("redirect") {
        return;
    }
    let port = free_port();
    let agent = Agent::start(AgentOptions {
        capture_ports: vec![port],
        ..AgentOptions::default()
    });
    let mut v4 = start_whoami(None, "127.0.0.2", port);
    check_redirect(&agent, None, "127.0.0.2", port);
    let mut v6 = start_whoami(None, "::1", port);
    check_redirect(&agent, None, "::1", port);
    // A sandbox netns: the agent's listener and upstream socket live in it.
    let ns = Netns::new();
    let mut inner = start_whoami(Some(&ns), "127.0.0.1", port);
    check_redirect(&agent, Some(&ns), "127.0.0.1", port);
    for c in [&mut v4, &mut v6, &mut inner] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

const UDP_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"quic?", ("127.0.0.1", 443)); print("sendto-ok")
except PermissionError: print("sendto-refused")
try:
    s.connect(("127.0.0.1", 443)); print("connect-ok")
except PermissionError: print("connect-refused")
"#;

#[test]
fn udp_443_refused_when_configured_and_allowed_otherwise() {
    if !require_privileges("udp443") {
        return;
    }
    for (block, expect) in [
        (true, "sendto-refused\nconnect-refused"),
        (false, "sendto-ok\nconnect-ok"),
    ] {
        let agent = Agent::start(AgentOptions {
            block_quic: block,
            ..AgentOptions::default()
        });
        let id = unique("sb");
        let cg = agent.cgroup(&id);
        agent.register(&id, None, "inv-udp");
        let out = sandboxed(&cg, None, "python3")
            .args(["-c", UDP_PY])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expect,
            "blockQuic={block}"
        );
    }
}

#[test]
fn agent_restart_keeps_counters_and_loses_or_doubles_no_flow() {
    if !require_privileges("restart") {
        return;
    }
    let mut agent = Agent::start(AgentOptions::default());
    let server = byte_server("127.0.0.1:0");
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, "inv-restart");
    let mut held = HeldClient::spawn(py_client(
        &cg,
        None,
        "127.0.0.1",
        server.port(),
        100,
        10_000,
    ));
    held.next_report();
    // Killed hard, with a connection open.
    agent.stop(true);
    // A connection that opens and closes entirely while the agent is down.
    let out = sandboxed(&cg, None, "python3")
        .arg(clients_dir().join("tcp_client.py"))
        .args([
            "127.0.0.1",
            &server.port().to_string(),
            "--request-bytes=77",
            "--response-bytes=777",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    held.say("more 40 4000");
    held.next_report();
    agent.spawn();
    // The restarted agent says how it found the programs on /status (a
    // condition to wait for, not a log line that may not be written yet).
    let st = agent.wait_status("the restarted agent's status", |s| {
        s["programs"].is_string()
    });
    assert_eq!(
        st["programs"],
        "Reused",
        "programs were re-attached:\n{}",
        agent.log_text()
    );
    held.say("more 10 1000");
    held.next_report();
    held.finish();
    let recs = agent.wait_records("restart flows", |r| flows_of(r, "inv-restart").len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    let recs = if recs.len() > 2 {
        recs
    } else {
        agent.records()
    };
    let mut flows: Vec<(i64, i64)> = flows_of(&recs, "inv-restart")
        .iter()
        .map(|f| (i(f, sc::L4_BYTES_SANDBOX_TX), i(f, sc::L4_BYTES_SANDBOX_RX)))
        .collect();
    flows.sort();
    assert_eq!(
        flows,
        vec![(77, 777), (150, 15_000)],
        "one record per connection, counters continuous"
    );
}

#[test]
fn sandbox_cannot_reach_the_attribution_api_or_change_its_attribution() {
    if !require_privileges("api_isolation") {
        return;
    }
    let agent = Agent::start(AgentOptions::default());
    let server = byte_server("127.0.0.1:0");
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, "inv-honest");
    // Root inside the sandbox tries to list and to re-register itself.
    for args in [
        vec!["sandbox".to_owned(), "list".to_owned()],
        vec![
            "sandbox".into(),
            "register".into(),
            id.clone(),
            "--cgroup".into(),
            id.clone(),
            "--invocation-id".into(),
            "inv-forged".into(),
        ],
    ] {
        let out = sandboxed(&cg, None, egret_bin().to_str().unwrap())
            .arg("--config")
            .arg(&agent.config)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "sandbox reached the API with {args:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("403") && err.contains("sandbox"), "{err}");
    }
    let out = sandboxed(&cg, None, "python3")
        .arg(clients_dir().join("tcp_client.py"))
        .args([
            "127.0.0.1",
            &server.port().to_string(),
            "--request-bytes=10",
            "--response-bytes=10",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let recs = agent.wait_records("honest flow", |r| flows_of(r, "inv-honest").len() == 1);
    assert!(flows_of(&recs, "inv-forged").is_empty());
}

/// `egret exec` itself, in the host netns and with `--netns`: the flow
/// record carries the invocation id exec printed and curl's own byte counts,
/// and a captured port is redirected to the listener inside the new netns.
#[test]
fn egret_exec_runs_sandboxes_with_and_without_their_own_netns() {
    if !require_privileges("egret_exec") {
        return;
    }
    let captured = free_port();
    let agent = Agent::start(AgentOptions {
        capture_ports: vec![captured],
        extra_yaml: "gateways:\n- name: all\n  defaultPolicy: allow-all\n".into(),
        ..AgentOptions::default()
    });
    let server = byte_server("0.0.0.0:0");
    // A second server on the captured port, reached through the agent.
    let redirected = byte_server(&format!("0.0.0.0:{captured}"));
    let curl = "curl -sS -m 20 -o /dev/null -w '%{size_request} %{size_header} %{size_download}' http://$H:$P/123456";
    for netns in [false, true] {
        for port in [server.port(), redirected.port()] {
            let host = if netns {
                "$(ip route show default | cut -d' ' -f3)"
            } else {
                "127.0.0.1"
            };
            let mut cmd = Command::new(egret_bin());
            cmd.arg("--config")
                .arg(&agent.config)
                .arg("exec")
                .args(["--agent-name", "exec-test"]);
            if netns {
                cmd.arg("--netns");
            }
            let out = cmd
                .args(["--", "sh", "-c", &format!("H={host}; P={port}; {curl}")])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "exec failed: {stderr}\n{}",
                agent.log_text()
            );
            let inv = stderr
                .lines()
                .find_map(|l| l.strip_prefix("egret: invocation "))
                .unwrap_or_else(|| panic!("no invocation printed: {stderr}"))
                .trim()
                .to_owned();
            let nums: Vec<i64> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            let recs = agent.wait_records("exec flow", |r| flows_of(r, &inv).len() == 1);
            let f = one_flow(&recs, &inv);
            assert_eq!(
                i(f, sc::L4_BYTES_SANDBOX_TX),
                nums[0],
                "{}",
                f.to_json_line()
            );
            assert_eq!(
                i(f, sc::L4_BYTES_SANDBOX_RX),
                nums[1] + nums[2],
                "{}",
                f.to_json_line()
            );
            assert_eq!(nums[2], 123_456);
            assert_eq!(
                f.get_bool(sc::L4_REDIRECTED),
                Some(port == captured),
                "{}",
                f.to_json_line()
            );
            assert_eq!(f.get_str(sc::AGENT_NAME), Some("exec-test"));
        }
    }
    // Every client family's CA variable points at the node's trust bundle.
    let out = Command::new(egret_bin())
        .arg("--config")
        .arg(&agent.config)
        .args(["exec", "--", "env"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let env = String::from_utf8_lossy(&out.stdout);
    for (var, _) in egret::tls::TRUST_VARIABLES {
        let value = env
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!("egret exec did not set {var}:\n{env}"));
        assert!(value.ends_with("/trust-bundle.pem"), "{var}={value}");
        assert!(std::path::Path::new(value).exists(), "{var}={value}");
    }
    // exec cleaned up: no sandbox cgroups or egret netns left behind.
    let left: Vec<_> = std::fs::read_dir(&agent.sandbox_root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
