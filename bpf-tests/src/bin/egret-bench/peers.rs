//! The processes a bench compares: the mock upstream, egret (agent + a
//! registered sandbox), nginx, HAProxy and mitmproxy, each on its own
//! loopback address and port 443 so the load generators use the same URL
//! for all of them.
//!
//! nginx and HAProxy are the capturing baselines: both terminate the
//! client's TLS, verify the upstream's certificate, keep upstream
//! connections alive and write one log line per request to a file (nginx:
//! `access_log`, HAProxy: `option httplog`), which the benches count.
use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use bpf_tests::{sandboxed, unique, Agent, AgentOptions, SandboxCgroup};

use crate::util::{
    err, find_pid, wait_until, BenchResult, Guarded, IoContext, TempDir, LOAD_CPU, SUBJECT_CPU,
};

/// The hostname every client asks for (the mock and the default gateway's
/// OpenAI route know it).
pub const HOST: &str = "api.openai.com";
pub const MOCK_IP: &str = "127.0.213.1";
pub const NGINX_IP: &str = "127.0.213.2";
pub const MITM_IP: &str = "127.0.213.3";
pub const HAPROXY_IP: &str = "127.0.213.4";

pub fn exe_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn bin(env: &str, name: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| exe_dir().join(name))
}

/// The mock provider (the upstream every subject forwards to).
pub struct Mock {
    pub proc: Guarded,
    pub ca: PathBuf,
    pub addr: SocketAddr,
}

impl Mock {
    pub fn start(dir: &Path) -> BenchResult<Mock> {
        let addr: SocketAddr = format!("{MOCK_IP}:443").parse().expect("literal");
        if std::net::TcpListener::bind(addr).is_err() {
            return err(format!("{addr} is in use (another bench running?)"));
        }
        let ready = dir.join("mock.ready");
        let child = Command::new("taskset")
            .args(["-c", LOAD_CPU])
            .arg(bin("MOCK_BIN", "mock-provider"))
            .args(["--listen", &addr.to_string()])
            .args(["--names", &format!("{HOST},{MOCK_IP},localhost")])
            .arg("--ca-dir")
            .arg(dir.join("mock-ca"))
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .spawn()
            .ctx(|| "start mock-provider".into())?;
        let proc = Guarded {
            child,
            name: "mock-provider".into(),
        };
        wait_until("mock-provider", Duration::from_secs(20), || ready.exists())?;
        Ok(Mock {
            proc,
            ca: dir.join("mock-ca/ca.crt"),
            addr,
        })
    }
}

/// A hosts file resolving [`HOST`] to `ip`.
pub fn hosts_file(dir: &Path, ip: &str) -> BenchResult<PathBuf> {
    let p = dir.join(format!("hosts-{ip}"));
    fs::write(&p, format!("127.0.0.1 localhost\n{ip} {HOST}\n"))
        .ctx(|| format!("write {}", p.display()))?;
    Ok(p)
}

/// egret: the agent (capturing port 443) and one registered sandbox.
pub struct Egret {
    pub agent: Agent,
    pub sandbox: SandboxCgroup,
    pub pid: u32,
    pub invocation: String,
    _dir: TempDir,
}

impl Egret {
    /// Starts the agent pinned to the subject CPU from its first instruction
    /// (so its runtime sizes itself to that one CPU) with `bin` (default:
    /// `EGRET_BIN`), and registers one sandbox.
    pub fn start(mock: &Mock, extra_yaml: &str, bin: Option<&Path>) -> BenchResult<Egret> {
        let real = bin
            .map(Path::to_path_buf)
            .unwrap_or_else(bpf_tests::egret_bin);
        let dir = TempDir::new("egret-bench-pin-")?;
        let wrapper = dir.join("egret-pinned.sh");
        // EGRET_BENCH_AGENT_CPUS: give the agent other CPUs (e.g. "0,1" for
        // a runtime with two workers) — for experiments, not the report.
        let cpus = std::env::var("EGRET_BENCH_AGENT_CPUS").unwrap_or_else(|_| SUBJECT_CPU.into());
        crate::util::write_exec_wrapper(
            &wrapper,
            &format!("taskset -c {cpus} {}", real.display()),
        )?;
        let saved = std::env::var_os("EGRET_BIN");
        std::env::set_var("EGRET_BIN", &wrapper);
        let agent = Agent::start(AgentOptions {
            capture_ports: vec![443],
            extra_yaml: extra_yaml.to_owned(),
            upstream_roots: vec![mock.ca.clone()],
            ..AgentOptions::default()
        });
        match saved {
            Some(v) => std::env::set_var("EGRET_BIN", v),
            None => std::env::remove_var("EGRET_BIN"),
        }
        let config = agent.config.display().to_string();
        let Some(pid) = find_pid(&[&config, " run"]) else {
            return err("egret agent process not found");
        };
        let id = unique("bench");
        let sandbox = agent.cgroup(&id);
        let invocation = unique("inv-bench-");
        agent.register(&id, None, &invocation);
        Ok(Egret {
            agent,
            sandbox,
            pid,
            invocation,
            _dir: dir,
        })
    }

    /// The admin /status document.
    pub fn status(&self) -> serde_json::Value {
        self.agent.status()
    }
}

/// Lines of the log at `path` that record a request for `request_path`
/// (nginx's combined format and HAProxy's httplog both quote the request
/// line; connection-level entries such as a failed handshake don't carry
/// it). 0 if the file does not exist yet.
pub fn logged_requests(path: &Path, request_path: &str) -> u64 {
    use std::io::BufRead;
    let Ok(f) = fs::File::open(path) else {
        return 0;
    };
    let needle = format!("{request_path} HTTP/");
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains(&needle))
        .count() as u64
}

/// Self-signed certificate for [`HOST`] (clients here do not verify).
fn write_self_signed(dir: &Path) -> BenchResult<(PathBuf, PathBuf)> {
    let ck = rcgen::generate_simple_self_signed(vec![HOST.to_owned()])
        .map_err(|e| crate::util::BenchError::Msg(format!("self-signed cert: {e}")))?;
    let cert = dir.join("proxy.crt");
    let key = dir.join("proxy.key");
    fs::write(&cert, ck.cert.pem()).ctx(|| "write cert".into())?;
    fs::write(&key, ck.key_pair.serialize_pem()).ctx(|| "write key".into())?;
    Ok((cert, key))
}

fn wait_port(what: &str, addr: SocketAddr, proc: &mut Guarded) -> BenchResult<()> {
    wait_until(what, Duration::from_secs(30), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() || !proc.alive()
    })?;
    if !proc.alive() {
        return err(format!("{what} exited during startup"));
    }
    Ok(())
}

/// nginx as a TLS-terminating reverse proxy with a TLS upstream (keep-alive
/// pool, upstream certificate verified like egret does) and an access log:
/// `access_log` in the default `combined` format without `buffer=`, so
/// nginx writes each request's line with its own write() when the request
/// ends.
pub struct Nginx {
    pub proc: Guarded,
    /// The access log.
    pub log: PathBuf,
    _dir: TempDir,
}

impl Nginx {
    pub fn start(mock: &Mock) -> BenchResult<Nginx> {
        let dir = TempDir::new("egret-bench-nginx-")?;
        let (cert, key) = write_self_signed(dir.path())?;
        let d = dir.path().display();
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    upstream mock {{
        server {upstream};
        keepalive 256;
        keepalive_requests 10000000;
    }}
    server {{
        listen {NGINX_IP}:443 ssl http2;
        server_name {HOST};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass https://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {HOST};
            proxy_ssl_server_name on;
            proxy_ssl_name {HOST};
            proxy_ssl_session_reuse on;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
        }}
    }}
}}
"#,
            upstream = mock.addr,
            cert = cert.display(),
            key = key.display(),
            ca = mock.ca.display(),
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).ctx(|| "write nginx.conf".into())?;
        let child = Command::new("taskset")
            .args(["-c", SUBJECT_CPU, "nginx", "-p"])
            .arg(dir.path())
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ctx(|| "start nginx".into())?;
        let mut proc = Guarded {
            child,
            name: "nginx".into(),
        };
        let addr = format!("{NGINX_IP}:443").parse().expect("literal");
        if let Err(e) = wait_port("nginx", addr, &mut proc) {
            let log = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            return err(format!("{e}\n{log}"));
        }
        Ok(Nginx {
            proc,
            log: dir.join("access.log"),
            _dir: dir,
        })
    }
}

/// HAProxy (Debian's 2.6) as a TLS-terminating reverse proxy: one thread
/// (`nbthread 1`), HTTP/2 and HTTP/1.1 to the client (ALPN), TLS to the
/// mock with its certificate verified (CA file, host name), idle upstream
/// connections reused by any client (`http-reuse always`), and one
/// `option httplog` line per request written to a file: `log stdout
/// format raw` with stdout redirected to that file, so each line is its
/// own writev() (seen with strace) to a regular file, which never blocks,
/// so none is dropped.
pub struct Haproxy {
    pub proc: Guarded,
    /// The request log (HAProxy's stdout).
    pub log: PathBuf,
    _dir: TempDir,
}

impl Haproxy {
    pub fn start(mock: &Mock) -> BenchResult<Haproxy> {
        let dir = TempDir::new("egret-bench-haproxy-")?;
        let (cert, key) = write_self_signed(dir.path())?;
        // HAProxy wants the certificate and its key in one PEM file.
        let pem = dir.join("proxy.pem");
        let mut both = fs::read_to_string(&cert).ctx(|| "read cert".into())?;
        both.push_str(&fs::read_to_string(&key).ctx(|| "read key".into())?);
        fs::write(&pem, both).ctx(|| "write proxy.pem".into())?;
        let conf = format!(
            r#"global
    nbthread 1
    maxconn 4096
    log stdout format raw local0 info
    ssl-server-verify required

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    timeout http-request 30s

frontend bench
    bind {HAPROXY_IP}:443 ssl crt {pem} alpn h2,http/1.1
    default_backend mock

backend mock
    http-reuse always
    server mock {upstream} ssl verify required ca-file {ca} sni str({HOST}) verifyhost {HOST} alpn http/1.1
"#,
            pem = pem.display(),
            upstream = mock.addr,
            ca = mock.ca.display(),
        );
        let conf_path = dir.join("haproxy.cfg");
        fs::write(&conf_path, conf).ctx(|| "write haproxy.cfg".into())?;
        let log = dir.join("requests.log");
        let errors = dir.join("stderr.log");
        let out = fs::File::create(&log).ctx(|| format!("create {}", log.display()))?;
        let err_file = fs::File::create(&errors).ctx(|| format!("create {}", errors.display()))?;
        // -db: foreground, no master process: the pid we hold is the one
        // process (and its one thread) that does the work.
        let child = Command::new("taskset")
            .args(["-c", SUBJECT_CPU, "haproxy", "-db", "-f"])
            .arg(&conf_path)
            .stdout(out)
            .stderr(err_file)
            .spawn()
            .ctx(|| "start haproxy".into())?;
        let mut proc = Guarded {
            child,
            name: "haproxy".into(),
        };
        let addr = format!("{HAPROXY_IP}:443").parse().expect("literal");
        if let Err(e) = wait_port("haproxy", addr, &mut proc) {
            let text = fs::read_to_string(&errors).unwrap_or_default();
            return err(format!("{e}\n{text}"));
        }
        Ok(Haproxy {
            proc,
            log,
            _dir: dir,
        })
    }
}

/// The mitmproxy venv: `EGRET_MITM_VENV`, else `<workspace>/.venv-mitm`.
pub fn mitm_venv() -> PathBuf {
    std::env::var_os("EGRET_MITM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| bpf_tests::workspace_root().join(".venv-mitm"))
}

pub fn mitmdump() -> Option<PathBuf> {
    let p = mitm_venv().join("bin/mitmdump");
    p.exists().then_some(p)
}

/// mitmproxy (mitmdump) in reverse-proxy mode in front of the mock.
pub struct Mitm {
    pub proc: Guarded,
    _dir: TempDir,
}

impl Mitm {
    pub fn start(mock: &Mock) -> BenchResult<Option<Mitm>> {
        let Some(exe) = mitmdump() else {
            return Ok(None);
        };
        let dir = TempDir::new("egret-bench-mitm-")?;
        let child = Command::new("taskset")
            .args(["-c", SUBJECT_CPU])
            .arg(exe)
            .arg("--mode")
            .arg(format!("reverse:https://{}/", mock.addr))
            .args(["--listen-host", MITM_IP, "--listen-port", "443"])
            .args(["--set", &format!("confdir={}", dir.path().display())])
            .args([
                "--set",
                &format!("ssl_verify_upstream_trusted_ca={}", mock.ca.display()),
            ])
            .args(["--set", "keep_host_header=true"])
            // Minting from the upstream certificate trips on the mock's rcgen leaf.
            .args(["--set", "upstream_cert=false"])
            .args(["--set", "flow_detail=0"])
            .arg("-q")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ctx(|| "start mitmdump".into())?;
        let mut proc = Guarded {
            child,
            name: "mitmproxy".into(),
        };
        let addr = format!("{MITM_IP}:443").parse().expect("literal");
        wait_port("mitmproxy", addr, &mut proc)?;
        Ok(Some(Mitm { proc, _dir: dir }))
    }
}

/// Wraps `program args` so it runs with `hosts` as /etc/hosts (a private
/// mount namespace), pinned to the load CPU, inside `sandbox` if given.
pub fn client(sandbox: Option<&SandboxCgroup>, hosts: &Path, program: &str) -> Command {
    let mut cmd = match sandbox {
        Some(cg) => sandboxed(cg, None, "unshare"),
        None => Command::new("unshare"),
    };
    bpf_tests::bind_hosts(&mut cmd, hosts);
    cmd.args(["taskset", "-c", LOAD_CPU, program]);
    cmd
}

/// Runs this binary's helper subcommand pinned to the load CPU, inside
/// `sandbox` if given.
pub fn helper(sandbox: Option<&SandboxCgroup>, args: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("egret-bench"));
    let mut cmd = match sandbox {
        Some(cg) => sandboxed(cg, None, "taskset"),
        None => Command::new("taskset"),
    };
    cmd.args(["-c", LOAD_CPU]).arg(exe).args(args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_requests_counts_request_lines_of_both_formats() {
        let dir = TempDir::new("egret-bench-logtest-").expect("tempdir");
        let log = dir.join("access.log");
        assert_eq!(logged_requests(&log, "/v1/chat/completions"), 0);
        fs::write(
            &log,
            concat!(
                // nginx, combined.
                "127.0.0.1 - - [03/Dec/2026:21:36:00 +0000] \"POST /v1/chat/completions HTTP/2.0\" 200 1040 \"-\" \"h2load nghttp2/1.52.0\"\n",
                // HAProxy httplog, HTTP/1.1 and HTTP/2 (absolute URI).
                "127.0.0.1:58652 [03/Dec/2026:21:28:43.934] bench~ mock/mock 0/0/0/1/1 200 822 - - ---- 1/1/0/0/0 0/0 \"POST /v1/chat/completions HTTP/1.1\"\n",
                "127.0.0.1:58642 [03/Dec/2026:21:28:43.896] bench~ mock/mock 0/0/6/11/17 200 822 - - ---- 1/1/0/0/0 0/0 \"POST https://api.openai.com/v1/chat/completions HTTP/2.0\"\n",
                // Connection-level entries and other paths are not requests here.
                "127.0.0.1:40000 [03/Dec/2026:21:28:40.000] bench/1: SSL handshake failure\n",
                "127.0.0.1 - - [03/Dec/2026:21:36:01 +0000] \"GET /json/16 HTTP/1.1\" 200 80 \"-\" \"-\"\n",
            ),
        )
        .expect("write");
        assert_eq!(logged_requests(&log, "/v1/chat/completions"), 3);
    }
}
