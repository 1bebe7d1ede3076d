//! The privileged test rig.
//!
//! Every fixture here creates its own kernel objects with unique names
//! (cgroups, network namespaces, veth pairs, bpffs pin dirs, agent state
//! dirs) and removes them in `Drop`, so a failing test still cleans up. Tests
//! panic rather than return `Result`. A test that needs something the kernel
//! or machine lacks prints why and returns — except when `CI` is set, where
//! it fails instead: CI never silently skips.
pub mod clickhouse_cluster;
pub mod clickhouse_rig;
pub mod prometheus_rig;
pub mod world;

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use egret::{
    attribution::{Attribution, SandboxSpec},
    record::Record,
};
use serde_json::Value;

/// How much slower than this machine the tests run: `EGRET_TEST_SLOWDOWN`
/// (a whole number, default 1). `cargo xtask vm-test` sets it for guests
/// emulated without hardware virtualization. The rig's deadlines are
/// multiplied by it: a deadline bounds a wait for a condition (a record, a
/// socket, readiness), so a slower machine waits longer for the same
/// condition and never asserts anything weaker.
pub fn patience(d: Duration) -> Duration {
    let factor = std::env::var("EGRET_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .clamp(1, 20);
    d * factor
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for interface names.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() % 0xfffff)
}

/// True when the test may run; false (after printing why) when it must be
/// skipped. Panics instead of skipping when `CI` is set.
pub fn require_privileges(test: &str) -> bool {
    let mut why = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        why.push("not running as root".to_owned());
    }
    if egret::cgroup::detect_mount().is_err() {
        why.push("no cgroup v2 mount".to_owned());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        why.push("iproute2 `ip` not found".to_owned());
    }
    if why.is_empty() {
        return true;
    }
    let msg = format!("{test}: cannot run: {}", why.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: privileged tests must run, not skip)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bpf-tests lives in the workspace")
        .to_path_buf()
}

/// The `egret` binary under test (`EGRET_BIN`, else target/debug/egret).
pub fn egret_bin() -> PathBuf {
    let p = std::env::var_os("EGRET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/egret"));
    assert!(
        p.exists(),
        "{} missing: build it first (cargo xtask test does)",
        p.display()
    );
    p
}

/// Options for one agent instance. Every instance gets its own sandbox root,
/// ports, state dir, bpffs dir and API socket.
#[derive(Clone)]
pub struct AgentOptions {
    pub capture_ports: Vec<u16>,
    pub block_quic: bool,
    /// Appended to the generated config (top-level keys such as `gateways`).
    pub extra_yaml: String,
    /// Appended inside the generated `node:` block: lines indented by two
    /// spaces (e.g. `  proxyProtocol:\n    listen: 127.0.0.1:PORT\n`).
    pub extra_node_yaml: String,
    /// Extra upstream roots (the mock provider's CA).
    pub upstream_roots: Vec<PathBuf>,
    /// Soft RLIMIT_NOFILE the agent process starts with (None: inherited).
    pub nofile_soft: Option<u64>,
    /// More `node:` settings, one `key: value` per line.
    pub node_yaml: String,
    /// Address of the admin listener (default 127.0.0.1).
    pub admin_ip: Option<String>,
    /// The agent's own /etc/hosts (its resolver checks plain-HTTP Host
    /// claims), bind-mounted in a mount namespace that still receives the
    /// host's mounts (new netns files).
    pub hosts: Option<PathBuf>,
    /// Environment variables of the agent process (e.g. `OTEL_*`).
    pub env: Vec<(String, String)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            capture_ports: vec![],
            block_quic: true,
            extra_yaml: String::new(),
            extra_node_yaml: String::new(),
            upstream_roots: Vec::new(),
            nofile_soft: None,
            node_yaml: String::new(),
            admin_ip: None,
            hosts: None,
            env: Vec::new(),
        }
    }
}

pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub cgroup_mount: PathBuf,
    pub sandbox_root: PathBuf,
    pub bpffs: PathBuf,
    pub api: PathBuf,
    pub listen_port: u16,
    pub admin_port: u16,
    /// Address of the admin listener.
    pub admin_ip: String,
    pub state_dir: PathBuf,
    child: Option<Child>,
    port_retried: bool,
    log: PathBuf,
    nofile_soft: Option<u64>,
    hosts: Option<PathBuf>,
    env: Vec<(String, String)>,
}

/// A free TCP port on loopback (bound then released), never the same one
/// twice in this process, so parallel tests do not pick each other's ports.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
        let port = l.local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Agent {
    pub fn start(opts: AgentOptions) -> Agent {
        let name = unique("egt");
        let dir = std::env::temp_dir().join(format!("egret-test-{name}"));
        fs::create_dir_all(&dir).expect("temp dir");
        let cgroup_mount = egret::cgroup::detect_mount().expect("cgroup v2");
        let listen_port = free_port();
        let sandbox_rel = format!("{name}.slice");
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/{name}"));
        let api = dir.join("api.sock");
        let state_dir = dir.join("state");
        let ports: Vec<String> = opts.capture_ports.iter().map(u16::to_string).collect();
        let roots: Vec<String> = opts
            .upstream_roots
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let config = dir.join("egret.yaml");
        let admin_ip = opts.admin_ip.clone().unwrap_or_else(|| "127.0.0.1".into());
        let admin_port = free_port();
        let node_extra: String = opts.node_yaml.lines().map(|l| format!("  {l}\n")).collect();
        let yaml = format!(
            "node:\n  sandboxRoot: {sandbox_rel}\n  capturePorts: [{}]\n  blockQuic: {}\n  listenPort: {listen_port}\n  stateDir: {}\n  bpffsDir: {}\n  apiSocket: {}\n  adminListen: {admin_ip}:{}\n  upstreamExtraRoots: [{}]\n{node_extra}{}{}",
            ports.join(", "),
            opts.block_quic,
            state_dir.display(),
            bpffs.display(),
            api.display(),
            admin_port,
            roots.join(", "),
            opts.extra_node_yaml,
            opts.extra_yaml,
        );
        fs::write(&config, yaml).expect("write config");
        let mut agent = Agent {
            name,
            log: dir.join("agent.log"),
            dir,
            config,
            sandbox_root: cgroup_mount.join(&sandbox_rel),
            cgroup_mount,
            bpffs,
            api,
            listen_port,
            admin_port,
            admin_ip,
            state_dir,
            child: None,
            port_retried: false,
            nofile_soft: opts.nofile_soft,
            hosts: opts.hosts.clone(),
            env: opts.env.clone(),
        };
        agent.spawn();
        agent
    }

    /// Starts (or restarts) the agent process and waits for its API.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut cmd = match &self.hosts {
            Some(hosts) => {
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "slave"]);
                bind_hosts(&mut c, hosts);
                c.arg(egret_bin());
                c
            }
            None => Command::new(egret_bin()),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("EGRET_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        if let Some(soft) = self.nofile_soft {
            // SAFETY: only setrlimit(2) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn egret run");
        self.child = Some(child);
        let deadline = Instant::now() + patience(Duration::from_secs(30));
        loop {
            if self.api_ready() {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = self.log_text();
                if log.contains("Address already in use") && !self.port_retried {
                    // Another process took one of our ports between picking
                    // and binding: pick new ones once.
                    self.port_retried = true;
                    self.child = None;
                    self.repick_ports();
                    return self.spawn();
                }
                panic!("egret run exited early ({st}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn api_ready(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.api).is_ok()
    }

    /// `GET /status` from the admin listener, as JSON.
    pub fn status(&self) -> Value {
        let body = self.admin_get("/status");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("status {body:?}: {e}"))
    }

    /// `/status` once the admin listener answers and `ready(status)` holds,
    /// within 30 s (waits for the condition, not for a log line).
    pub fn wait_status(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + patience(Duration::from_secs(30));
        loop {
            let up =
                std::net::TcpStream::connect((self.admin_ip.as_str(), self.admin_port)).is_ok();
            if up {
                let st = self.status();
                if ready(&st) {
                    return st;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}: {st}"
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for the admin listener ({what})"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One kernel-side counter (`EGRET_STATS`) from `/status`.
    pub fn kernel_stat(&self, name: &str) -> u64 {
        self.status()["kernel"][name].as_u64().unwrap_or(0)
    }

    /// `GET /metrics` from the admin listener (Prometheus text).
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics")
    }

    /// The value of one metric series (`name{labels}` exactly as exposed).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok()).flatten()
        })
    }

    fn admin_get(&self, path: &str) -> String {
        use std::io::Read;
        let mut s =
            std::net::TcpStream::connect((self.admin_ip.as_str(), self.admin_port)).expect("admin");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("read");
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("")
            .to_owned()
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Open file descriptors of the agent process.
    pub fn fd_count(&self) -> usize {
        let pid = self.pid().expect("agent running");
        fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd")
            .count()
    }

    /// (VmRSS, VmHWM) of the agent process, in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let pid = self.pid().expect("agent running");
        proc_rss_kib(pid)
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the agent to exit;
    /// returns its status and how long it took. Panics on timeout (after
    /// killing it).
    pub fn terminate(&mut self, timeout: Duration) -> (std::process::ExitStatus, Duration) {
        self.send_sigterm();
        self.wait_exit(timeout)
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        let pid = self.pid().expect("agent running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    /// Waits (at most `timeout`) for the agent to exit; its status and how
    /// long that took. Panics on timeout (after killing it).
    pub fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("agent running");
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().expect("wait agent") {
                let _ = fs::remove_file(&self.api);
                return (st, t0.elapsed());
            }
            if t0.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "agent did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn repick_ports(&mut self) {
        let text = fs::read_to_string(&self.config).expect("read config");
        let (listen, admin) = (free_port(), free_port());
        let text = text
            .replace(
                &format!("listenPort: {}\n", self.listen_port),
                &format!("listenPort: {listen}\n"),
            )
            .replace(
                &format!("adminListen: {}:{}\n", self.admin_ip, self.admin_port),
                &format!("adminListen: {}:{admin}\n", self.admin_ip),
            );
        fs::write(&self.config, text).expect("write config");
        self.listen_port = listen;
        self.admin_port = admin;
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the agent: SIGTERM (graceful) or SIGKILL.
    pub fn stop(&mut self, kill: bool) {
        if let Some(mut c) = self.child.take() {
            let sig = if kill {
                nix::sys::signal::Signal::SIGKILL
            } else {
                nix::sys::signal::Signal::SIGTERM
            };
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
        let _ = fs::remove_file(&self.api);
    }

    /// Runs `egret <args>` against this agent's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(egret_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run egret")
    }

    /// Records from this agent's store.
    pub fn records(&self) -> Vec<Record> {
        let out = self.cli(&["records", "--json"]);
        assert!(
            out.status.success(),
            "egret records failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("record json"))
            .collect()
    }

    /// Waits until `pred` holds for the records, returning them.
    pub fn wait_records(&self, what: &str, pred: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        let deadline = Instant::now() + patience(Duration::from_secs(20));
        loop {
            let recs = self.records();
            if pred(&recs) {
                return recs;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; records:\n{}\nagent log:\n{}",
                    recs.iter()
                        .map(Record::to_json_line)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates a sandbox cgroup under this agent's root.
    pub fn cgroup(&self, id: &str) -> SandboxCgroup {
        let path = self.sandbox_root.join(id);
        fs::create_dir_all(&path).expect("create sandbox cgroup");
        SandboxCgroup { path }
    }

    /// Registers a sandbox through the API (as a trusted caller).
    pub fn register(&self, id: &str, netns: Option<&Netns>, invocation: &str) {
        self.register_with(id, netns, invocation, None)
    }

    /// Registers a sandbox, optionally with the invocation's traceparent.
    pub fn register_with(
        &self,
        id: &str,
        netns: Option<&Netns>,
        invocation: &str,
        traceparent: Option<&str>,
    ) {
        let spec = SandboxSpec {
            cgroup: id.to_owned(),
            netns: netns.map(|n| n.path()),
            attribution: Attribution {
                invocation_id: invocation.to_owned(),
                agent_name: format!("agent-{id}"),
                agent_namespace: "tests".into(),
                agent_kind: "test".into(),
                traceparent: traceparent.map(str::to_owned),
                ..Default::default()
            },
        };
        let api = self.api.clone();
        let id = id.to_owned();
        block_on(async move {
            egret::api::Client::new(api)
                .register(&id, &spec)
                .await
                .expect("register sandbox")
        });
    }

    pub fn unregister(&self, id: &str) {
        let api = self.api.clone();
        let id = id.to_owned();
        block_on(async move { egret::api::Client::new(api).unregister(&id).await })
            .expect("unregister sandbox");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(false);
        if let Ok(entries) = fs::read_dir(&self.sandbox_root) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let _ = egret::cgroup::remove(&e.path());
                }
            }
        }
        let _ = egret::cgroup::remove(&self.sandbox_root);
        egret::bpf::clear_pins(&self.bpffs);
        let _ = fs::remove_dir(&self.bpffs);
        if std::thread::panicking() {
            eprintln!("agent log ({}):\n{}", self.name, self.log_text());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// (VmRSS, VmHWM) of a process, in KiB.
pub fn proc_rss_kib(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raises this process's soft RLIMIT_NOFILE towards `n` (children inherit
/// it): to the hard limit at most, above it when allowed (CAP_SYS_RESOURCE).
/// Returns the soft limit now in force.
pub fn raise_nofile(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur >= n {
        return lim.rlim_cur;
    }
    for want in [
        libc::rlimit {
            rlim_cur: n,
            rlim_max: lim.rlim_max.max(n),
        },
        libc::rlimit {
            rlim_cur: n.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        },
    ] {
        // SAFETY: valid pointer to an initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A sandbox cgroup; removed (with anything left in it) on drop.
pub struct SandboxCgroup {
    pub path: PathBuf,
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        let _ = egret::cgroup::remove(&self.path);
    }
}

/// A named network namespace with loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("egtn");
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
    /// A command that runs inside this netns (not in any sandbox cgroup).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair from the host into `ns`: host side `host_ip/24`, netns side
/// `ns_ip/24`. Deleted with the netns (and explicitly on drop).
pub struct Veth {
    pub host_if: String,
}

impl Veth {
    pub fn new(ns: &Netns, host_ip: &str, ns_ip: &str) -> Veth {
        let host_if = unique("egv");
        let ns_if = format!("{host_if}p");
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns.name,
        ]);
        let v = Veth { host_if };
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &v.host_if]);
        ip(&["link", "set", &v.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &ns.name, "link", "set", &ns_if, "up"]);
        v
    }
}

impl Veth {
    /// Adds IPv6 addresses (`/64`, no DAD) to both ends.
    pub fn add_v6(&self, ns: &Netns, host_ip: &str, ns_ip: &str) {
        let ns_if = format!("{}p", self.host_if);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{host_ip}/64"),
            "dev",
            &self.host_if,
            "nodad",
        ]);
        ip(&[
            "-n",
            &ns.name,
            "-6",
            "addr",
            "add",
            &format!("{ns_ip}/64"),
            "dev",
            &ns_if,
            "nodad",
        ]);
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// Makes `unshare` (the program of `cmd`) run what is appended next with
/// `hosts` bind-mounted over /etc/hosts in a private mount namespace: how
/// sandbox workloads reach the mock provider under the real provider names.
pub fn bind_hosts(cmd: &mut Command, hosts: &Path) {
    cmd.args([
        "-m",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
    ])
    .arg(hosts);
}

/// Builds a command that starts inside `cgroup` (and `netns` if given),
/// moved there between fork and exec like `egret exec` does.
pub fn sandboxed(cgroup: &SandboxCgroup, netns: Option<&Netns>, program: &str) -> Command {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.path.join("cgroup.procs"))
        .expect("open cgroup.procs");
    let ns = netns.map(|n| fs::File::open(n.path()).expect("open netns"));
    let mut cmd = Command::new(program);
    // SAFETY: only write(2) and setns(2) between fork and exec; the files are
    // moved into the closure and live as long as the Command.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(ns) = &ns {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// Connects (TCP) to each `host port` pair given on the command line and
/// prints one word per attempt: `connected`, `eperm` (refused by the kernel
/// programs), `refused` (nothing listening), `unreachable` (no route) or
/// `error:ERRNO`. With `--send`, a GET goes out on the connection and
/// `got:N` tells how many bytes came back.
const CONNECT_PY: &str = r#"
import errno, socket, sys
args = sys.argv[1:]
send = args and args[0] == "--send"
if send: args = args[1:]
for k in range(0, len(args), 2):
    host, port = args[k], int(args[k + 1])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect((host, port))
    except PermissionError:
        print("eperm"); s.close(); continue
    except ConnectionRefusedError:
        print("refused"); s.close(); continue
    except OSError as e:
        print("unreachable" if e.errno == errno.ENETUNREACH else "error:%d" % e.errno)
        s.close(); continue
    if not send:
        print("connected"); s.close(); continue
    try:
        s.sendall(b"GET /json/10 HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        got = b""
        while True:
            c = s.recv(4096)
            if not c: break
            got += c
        print("got:%d" % len(got))
    except OSError as e:
        print("got:0")
"#;

/// Runs [`CONNECT_PY`] with `cmd` (a `python3` command, in a sandbox or
/// not) against `pairs`; one word per pair.
pub fn connect_words(mut cmd: Command, pairs: &[(&str, u16)], send: bool) -> Vec<String> {
    cmd.args(["-c", CONNECT_PY]);
    if send {
        cmd.arg("--send");
    }
    for (h, p) in pairs {
        cmd.arg(h).arg(p.to_string());
    }
    let out = cmd.output().expect("python3");
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

pub fn clients_dir() -> PathBuf {
    workspace_root().join("bpf-tests/clients")
}

/// A running `tcp_client.py` (see bpf-tests/clients): connects, transfers,
/// reports its own counts, then holds the socket open until told to close.
pub struct HeldClient {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl HeldClient {
    /// `cmd` must run `python3 tcp_client.py ...` with `--hold`.
    pub fn spawn(mut cmd: Command) -> HeldClient {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        HeldClient { child, out }
    }

    /// Next JSON line the client printed.
    pub fn next_report(&mut self) -> Value {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read client");
        assert!(!line.is_empty(), "client exited early");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("client said {line:?}: {e}"))
    }

    /// Sends a command line ("more N" / "close").
    pub fn say(&mut self, cmd: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("write client");
        stdin.flush().expect("flush");
    }

    /// Waits for the client to exit on its own (after its last report).
    pub fn finish_quietly(mut self) {
        let st = self.child.wait().expect("wait client");
        assert!(st.success(), "client failed: {st}");
    }

    pub fn finish(mut self) {
        self.say("close");
        let st = self.child.wait().expect("wait client");
        assert!(st.success(), "client failed: {st}");
    }
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ss -tinH` counters for the TCP socket with local port `port`, run in
/// `netns`: (bytes_sent − bytes_retrans, bytes_received), i.e. payload the
/// socket delivered once.
pub fn ss_counters(netns: Option<&Netns>, port: u16) -> (u64, u64) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = ns.command("ss");
            c.args(["-tinH", "state", "established"]);
            c
        }
        None => {
            let mut c = Command::new("ss");
            c.args(["-tinH", "state", "established"]);
            c
        }
    };
    cmd.arg(format!("sport = :{port}"));
    let out = cmd.output().expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |key: &str| -> u64 {
        text.split_whitespace()
            .find_map(|t| t.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        find("bytes_sent:") - find("bytes_retrans:"),
        find("bytes_received:"),
    )
}

/// A TCP server thread on `addr`: each request line carrying a number N
/// (a bare token, or a path `/N`) is
/// answered with N bytes; a line starting with "GET " (curl) gets an HTTP/1.1
/// response with an N-byte body, then the connection is closed.
pub fn byte_server(addr: &str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind(addr).expect("bind byte server");
    let local = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve_bytes(s));
        }
    });
    local
}

fn serve_bytes(mut s: std::net::TcpStream) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // The first numeric token (bare, or a path `/N`) is the size asked
        // for; other lines (HTTP headers) are ignored.
        let Some(n) = line
            .split_whitespace()
            .find_map(|t| t.trim_start_matches('/').parse::<usize>().ok())
        else {
            continue;
        };
        let http = line.starts_with("GET ");
        if http {
            // Consume the request headers first: closing with unread data
            // would send a reset that can discard the response at the peer.
            loop {
                let mut h = String::new();
                match r.read_line(&mut h) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if h.trim().is_empty() => break,
                    Ok(_) => {}
                }
            }
        }
        if http {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
        }
        let buf = vec![b'x'; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len());
            if s.write_all(&buf[..k]).is_err() {
                return;
            }
            left -= k;
        }
        if http {
            // HTTP client (curl): one response, then close.
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut rest = Vec::new();
            use std::io::Read;
            let _ = r.read_to_end(&mut rest);
            return;
        }
    }
}

/// Flow records whose `invocation.id` is `inv`.
pub fn flows_of<'a>(recs: &'a [Record], inv: &str) -> Vec<&'a Record> {
    recs.iter()
        .filter(|r| r.kind() == "flow" && r.invocation_id() == Some(inv))
        .collect()
}
