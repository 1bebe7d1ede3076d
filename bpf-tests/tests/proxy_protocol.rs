//! Trusted dialers: attribution from PROXY protocol v2 TLVs, end to end.
//!
//! An agent runs with a trusted unix socket and a TCP listener trusting only
//! 127.0.0.1/32. This test process (outside every sandbox) plays the trusted
//! dialer: a PROXY v2 header with attribution TLVs and the mock provider as
//! destination, then a real TLS + HTTP request trusting the node CA. The
//! records carry the TLV attribution. Then the ways it must not work: an
//! untrusted source address, a sandbox dialing the trusted listeners with a
//! forged header, and a sandbox sending a forged header through the normal
//! redirect path — none of them ever produces a record with the forged
//! attribution.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bpf_tests::*;
use egret::{attribution::Attribution, proxy_protocol::ProxyHeader, record::Record, semconv as sc};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The mock provider on 127.0.0.1 (a free port) and its TLS address.
struct MockProvider {
    proc: bpf_tests::world::MockProvider,
    addr: SocketAddr,
}

impl MockProvider {
    /// HTTPS on 127.0.0.1, a free port; its certificate names the providers.
    fn start() -> MockProvider {
        let (proc, info) =
            bpf_tests::world::MockProvider::spawn(&["--listen".into(), "127.0.0.1:0".into()]);
        let addr = info["tls"][0].as_str().unwrap().parse().unwrap();
        MockProvider { proc, addr }
    }
}

fn attribution(inv: &str) -> Attribution {
    Attribution {
        invocation_id: inv.to_owned(),
        agent_kind: "TaskAgent".into(),
        agent_namespace: "team-pp".into(),
        agent_name: "jq-bot".into(),
        agent_uid: "uid-7f3a".into(),
        agent_revision: "42".into(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: None,
    }
}

/// The header a trusted dialer sends for a connection to `dst`.
fn header(inv: &str, dst: SocketAddr) -> Vec<u8> {
    ProxyHeader::tcp("10.77.0.5:41000".parse().unwrap(), dst)
        .with_authority("api.openai.com")
        .with_attribution(attribution(inv))
        .with_checksum()
        .encode()
        .unwrap()
}

fn tls_client(ca: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("node CA") {
        roots.add(c.expect("node CA pem")).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Sends `header`, then one HTTPS request for api.openai.com on the same
/// stream: (status, body), or why it failed.
async fn dial<S>(
    mut stream: S,
    header: &[u8],
    ca: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    stream
        .write_all(header)
        .await
        .map_err(|e| format!("write header: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tls_client(ca).connect(name, stream),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())?
    .map_err(|e| format!("TLS handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.openai.com")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-pp-test")
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Writes `bytes` and reads until the agent closes: how many bytes came back.
async fn refused<S>(mut stream: S, bytes: &[u8]) -> usize
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = stream.write_all(bytes).await;
    let mut got = 0;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the agent kept a refused connection open"),
        }
    }
}

/// A sandboxed dialer: connects (`tcp HOST:PORT` or `unix PATH`), sends the
/// hex bytes, reads until closed and prints how many bytes came back.
const SANDBOX_DIALER: &str = r#"
import json, socket, sys
kind, target, data = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
if kind == "unix":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(target)
else:
    host, port = target.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)))
    except PermissionError:
        # Refused by the kernel programs at connect().
        print(json.dumps({"eperm": True, "received": 0}))
        sys.exit(0)
s.settimeout(10)
try:
    s.sendall(data)
except OSError:
    pass
got = 0
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += len(b)
except OSError:
    pass
print(json.dumps({"received": got}))
"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sandbox_dial(cg: &SandboxCgroup, kind: &str, target: &str, data: &[u8]) -> Value {
    let out = sandboxed(cg, None, "python3")
        .args(["-c", SANDBOX_DIALER, kind, target, &hex(data)])
        .output()
        .expect("run python3 in the sandbox");
    assert!(
        out.status.success(),
        "sandboxed dialer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dialer output")
}

fn with_inv<'a>(recs: &'a [Record], inv: &str) -> Vec<&'a Record> {
    recs.iter()
        .filter(|r| r.invocation_id() == Some(inv))
        .collect()
}

/// The sandbox's flow to the captured port `port`, redirected by the kernel.
fn redirected_flow<'a>(recs: &'a [Record], inv: &str, port: u16) -> Option<&'a Record> {
    flows_of(recs, inv).into_iter().find(|f| {
        f.get_i64(sc::SERVER_PORT) == Some(i64::from(port))
            && f.get_bool(sc::L4_REDIRECTED) == Some(true)
    })
}

fn dump(recs: &[&Record]) -> String {
    recs.iter()
        .map(|r| r.to_json_line())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn trusted_dialers_attribute_and_sandboxes_never_can() {
    if !require_privileges("proxy_protocol") {
        return;
    }
    let mock = MockProvider::start();
    let pp_port = free_port();
    let pp_dir = std::env::temp_dir().join(unique("egret-pp-"));
    std::fs::create_dir_all(&pp_dir).unwrap();
    let pp_sock = pp_dir.join("pp.sock");
    let agent = Agent::start(AgentOptions {
        // The sandbox's connections to the mock are redirected to the agent.
        capture_ports: vec![mock.addr.port()],
        upstream_roots: vec![mock.proc.dir().join("ca/ca.crt")],
        extra_node_yaml: format!(
            "  proxyProtocol:\n    listen: 127.0.0.1:{pp_port}\n    unixSocket: {}\n    trustedCidrs: [127.0.0.1/32]\n",
            pp_sock.display()
        ),
        ..AgentOptions::default()
    });
    let ca = agent.state_dir.join("ca/ca.crt");
    let pp_addr = SocketAddr::from(([127, 0, 0, 1], pp_port));
    let mode = std::fs::metadata(&pp_sock)
        .expect("unix socket")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // --- What must not work. -------------------------------------------
    let forged = unique("inv-forged-");
    let forged_header = header(&forged, mock.addr);
    let plain_request = b"GET /headers HTTP/1.1\r\nhost: api.openai.com\r\n\r\n";
    let forged_plain = [forged_header.as_slice(), plain_request].concat();

    // An untrusted source address (127.0.0.2; only 127.0.0.1/32 is trusted).
    block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = s.connect(pp_addr).await.expect("connect from 127.0.0.2");
        let e = dial(stream, &forged_header, &ca, "GET", "/headers", "")
            .await
            .expect_err("an untrusted source must be refused");
        assert!(e.contains("TLS handshake"), "{e}");
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = s.connect(pp_addr).await.unwrap();
        assert_eq!(refused(stream, &forged_plain).await, 0);
    });

    // A trusted source without a valid v2 header: v1, or none at all.
    block_on(async {
        let stream = tokio::net::TcpStream::connect(pp_addr).await.unwrap();
        let v1 = b"PROXY TCP4 10.0.0.1 127.0.0.1 4000 443\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(refused(stream, v1).await, 0);
        let stream = tokio::net::TcpStream::connect(pp_addr).await.unwrap();
        assert_eq!(refused(stream, plain_request).await, 0);
        // LOCAL (a health check) is accepted and closed, nothing served.
        let stream = tokio::net::UnixStream::connect(&pp_sock).await.unwrap();
        let local = ProxyHeader::local().encode().unwrap();
        assert_eq!(
            refused(stream, &[local.as_slice(), plain_request].concat()).await,
            0
        );
    });

    // A sandbox (real cgroup, kernel attribution) dialing the trusted
    // listeners with a forged header: its source is 127.0.0.1, trusted by
    // CIDR, but the kernel programs refuse its connect to the listener
    // (an agent endpoint, guarded like the admin listener); were it to get
    // through, the kernel tag on its socket would give it away. The unix
    // socket refuses it by cgroup.
    let kernel_inv = unique("inv-kernel-");
    let id = unique("sb");
    let cg = agent.cgroup(&id);
    agent.register(&id, None, &kernel_inv);
    let r = sandbox_dial(&cg, "tcp", &pp_addr.to_string(), &forged_plain);
    assert_eq!(
        r["eperm"], true,
        "sandbox connected to the trusted TCP listener: {r}"
    );
    assert!(agent.status()["kernel"]["admin_refused"].as_u64() >= Some(1));
    let r = sandbox_dial(&cg, "unix", pp_sock.to_str().unwrap(), &forged_plain);
    assert_eq!(
        r["received"], 0,
        "sandbox got an answer on the trusted unix socket"
    );

    // A sandbox sending a PROXY header through the normal redirect path: it
    // is just bytes (neither TLS nor HTTP), spliced to the destination as the
    // default gateway's nonHttp says; the attribution stays the kernel's.
    let _ = sandbox_dial(&cg, "tcp", &mock.addr.to_string(), &forged_plain);

    // --- What must work. -------------------------------------------------
    // Over the unix socket: GET /headers (the mock echoes the headers it got).
    let inv_unix = unique("inv-ppunix-");
    let (status, body) = block_on(async {
        let stream = tokio::net::UnixStream::connect(&pp_sock).await.unwrap();
        dial(
            stream,
            &header(&inv_unix, mock.addr),
            &ca,
            "GET",
            "/headers",
            "",
        )
        .await
    })
    .unwrap_or_else(|e| panic!("unix dialer: {e}\nagent log:\n{}", agent.log_text()));
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    let sent_tp = seen["traceparent"].as_str().expect("traceparent upstream");
    assert!(
        sent_tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "the TLV traceparent is the parent upstream: {sent_tp}"
    );

    // Over TCP from 127.0.0.1: an OpenAI chat completion.
    let inv_tcp = unique("inv-pptcp-");
    let chat = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"one two three"}]}"#;
    let (status, body) = block_on(async {
        let stream = tokio::net::TcpStream::connect(pp_addr).await.unwrap();
        dial(
            stream,
            &header(&inv_tcp, mock.addr),
            &ca,
            "POST",
            "/v1/chat/completions",
            chat,
        )
        .await
    })
    .unwrap_or_else(|e| panic!("tcp dialer: {e}\nagent log:\n{}", agent.log_text()));
    assert_eq!(status, 200, "{body}");

    let recs = agent.wait_records("transactions of both trusted dialers", |r| {
        !with_inv(r, &inv_unix).is_empty()
            && !with_inv(r, &inv_tcp).is_empty()
            && redirected_flow(r, &kernel_inv, mock.addr.port()).is_some()
    });
    for inv in [&inv_unix, &inv_tcp] {
        let mine = with_inv(&recs, inv);
        assert_eq!(mine.len(), 1, "{}", dump(&mine));
        let r = mine[0];
        assert_eq!(r.kind(), "transaction");
        assert_eq!(
            r.get_str(sc::ATTRIBUTION_SOURCE),
            Some(sc::ATTRIBUTION_SOURCE_PROXY_PROTOCOL)
        );
        assert_eq!(r.get_str(sc::AGENT_KIND), Some("TaskAgent"));
        assert_eq!(r.get_str(sc::AGENT_NAMESPACE), Some("team-pp"));
        assert_eq!(r.get_str(sc::AGENT_NAME), Some("jq-bot"));
        assert_eq!(r.get_str(sc::AGENT_UID), Some("uid-7f3a"));
        assert_eq!(r.get_str(sc::AGENT_REVISION), Some("42"));
        assert_eq!(r.get_str(sc::SERVER_ADDRESS), Some("api.openai.com"));
        assert_eq!(
            r.get_i64(sc::SERVER_PORT),
            Some(i64::from(mock.addr.port()))
        );
        assert_eq!(r.get_i64(sc::HTTP_RESPONSE_STATUS_CODE), Some(200));
        assert_eq!(
            r.get_str(sc::TRACE_ID),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            r.get_str(sc::PARENT_SPAN_ID),
            Some(egret::attribution::invocation_span_id(r.invocation_id().unwrap()).as_str())
        );
        assert!(r.get(sc::SOCKET_COOKIE).is_none(), "{}", r.to_json_line());
    }
    let chat = with_inv(&recs, &inv_tcp)[0];
    assert_eq!(chat.get_str(sc::GEN_AI_PROVIDER_NAME), Some("openai"));
    assert_eq!(chat.get_str(sc::GEN_AI_REQUEST_MODEL), Some("gpt-4o-mini"));
    assert_eq!(chat.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(3));
    assert!(chat.get_str(sc::API_KEY_ID).is_some());
    assert!(!chat.to_json_line().contains("sk-pp-test"));
    let unix = with_inv(&recs, &inv_unix)[0];
    assert_eq!(
        unix.get_str(sc::SPAN_ID).map(|s| sent_tp.contains(s)),
        Some(true)
    );

    // The sandbox's connections kept the kernel's attribution: the one
    // through the redirect path has a flow record under the registered
    // invocation, and nothing anywhere carries the forged one.
    let flows = flows_of(&recs, &kernel_inv);
    let f = redirected_flow(&recs, &kernel_inv, mock.addr.port()).unwrap();
    assert!(f.get_i64(sc::L4_BYTES_SANDBOX_TX).unwrap_or(0) >= forged_plain.len() as i64);
    for f in &flows {
        assert_eq!(f.get_str(sc::ATTRIBUTION_SOURCE), Some("kernel"));
    }
    // Give anything the refused connections might (wrongly) have produced
    // time to reach the store, then look again.
    std::thread::sleep(Duration::from_millis(1500));
    let recs = agent.records();
    let leaked = with_inv(&recs, &forged);
    assert!(
        leaked.is_empty(),
        "forged attribution recorded:\n{}",
        dump(&leaked)
    );
    assert!(
        with_inv(&recs, &kernel_inv)
            .iter()
            .all(|r| r.get_str(sc::ATTRIBUTION_SOURCE) != Some("proxy-protocol")),
        "{}",
        dump(&with_inv(&recs, &kernel_inv))
    );

    // Each refusal was logged with its reason.
    let log = agent.log_text();
    for why in [
        "source address outside trustedCidrs",
        "PROXY protocol v1",
        "bad signature",
        "inside the sandbox tree",
    ] {
        assert!(
            log.contains(why),
            "no refusal for {why:?} in the agent log:\n{log}"
        );
    }
    // …and counted by result, the same on /status and /metrics.
    let st = agent.status();
    let pp = &st["proxy_protocol"];
    for (result, at_least) in [
        ("accepted", 1),
        ("local", 1),
        ("refused_untrusted_peer", 2),
        ("refused_bad_header", 2),
        // Sandboxes no longer reach the TCP listener (the kernel refuses
        // them); the unix socket's refusal by cgroup is counted here.
        ("refused_sandbox_peer", 1),
    ] {
        let n = pp[result].as_u64().unwrap_or(0);
        assert!(n >= at_least, "{result}: {n} < {at_least} in {pp}");
        assert_eq!(
            agent.metric(&format!(
                "egret_proxy_protocol_connections_total{{result=\"{result}\"}}"
            )),
            Some(n as f64),
            "/metrics disagrees with /status for {result}"
        );
    }
    let _ = std::fs::remove_dir_all(&pp_dir);
}
