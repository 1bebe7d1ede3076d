//! A world for L7 tests: our mock provider on a loopback address of the
//! test's own, an agent capturing its ports, and sandboxes that reach the
//! providers' real hostnames through a private `/etc/hosts` (bind-mounted
//! for the sandbox process only) with the node CA trusted.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use egret::record::Record;

use crate::{egret_bin, sandboxed, unique, workspace_root, Agent, AgentOptions, SandboxCgroup};

/// Every name the sandbox's hosts file maps to the mock.
pub const NAMES: &str = concat!(
    "api.anthropic.com,api.openai.com,generativelanguage.googleapis.com,mcp.local,denied.example,localhost,",
    // Clouds and OpenAI-compatible servers (bpf-tests/tests/providers.rs).
    "egret-test.openai.azure.com,api.groq.com,api.mistral.ai,api.deepseek.com,api.x.ai,openrouter.ai,",
    "us-east5-aiplatform.googleapis.com,us-central1-aiplatform.googleapis.com,ollama.local,vllm.local,",
    // AWS Bedrock Runtime (bpf-tests/tests/bedrock.rs).
    "bedrock-runtime.us-east-1.amazonaws.com"
);

/// The mock-provider process; killed (and its directory removed) on drop.
pub struct MockProvider {
    child: Child,
    dir: PathBuf,
}

impl MockProvider {
    /// Starts mock-provider with `args` (listeners, names) in a fresh
    /// directory and waits for its ready file; returns it with what the
    /// ready file says (its listening addresses).
    pub fn spawn(args: &[String]) -> (MockProvider, serde_json::Value) {
        let dir = std::env::temp_dir().join(unique("egret-mock-"));
        std::fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready");
        let child = Command::new(mock_bin())
            .args(args)
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .spawn()
            .expect("start mock-provider (cargo xtask test builds it)");
        let mock = MockProvider { child, dir };
        let deadline = Instant::now() + crate::patience(Duration::from_secs(20));
        while !ready.exists() {
            assert!(Instant::now() < deadline, "mock-provider not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&ready).unwrap();
        let info = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("mock-provider ready file {text:?}: {e}"));
        (mock, info)
    }

    /// The mock's directory (its CA is `ca/ca.crt`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The mock-provider binary: `MOCK_BIN`, else next to the egret binary
/// under test, else target/debug.
pub fn mock_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOCK_BIN") {
        return PathBuf::from(p);
    }
    let sibling = egret_bin().with_file_name("mock-provider");
    if sibling.exists() {
        return sibling;
    }
    workspace_root().join("target/debug/mock-provider")
}

/// The Python of the venv with the provider SDKs (`EGRET_VENV`, else .venv).
pub fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("EGRET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    let py = venv.join("bin/python");
    py.exists().then_some(py)
}

/// True when the venv is there; else prints why the test is skipped —
/// or panics when `CI` is set.
pub fn require_venv(test: &str) -> bool {
    if venv_python().is_some() {
        return true;
    }
    let msg = format!("{test}: no Python venv with the provider SDKs (cargo xtask setup makes it)");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// A loopback address of this test's own (127.x.y.z), so tests that all
/// bind port 443 never collide.
pub fn own_loopback() -> String {
    let n = unique("");
    let h = n
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!(
        "127.{}.{}.{}",
        100 + h % 100,
        (h >> 8) % 250 + 1,
        (h >> 16) % 250 + 1
    )
}

/// How to build a [`World`].
#[derive(Clone)]
pub struct WorldOptions {
    /// Appended to the agent config (top-level keys such as `gateways`).
    pub extra_yaml: String,
    /// Ports the mock serves HTTPS on (each also captured by the agent).
    pub tls_ports: Vec<u16>,
    /// Ports the mock serves plain HTTP on (each also captured).
    pub plain_ports: Vec<u16>,
    /// More agent settings (capture ports are added to).
    pub agent: AgentOptions,
    /// More mock-provider arguments (e.g. another `--listen`).
    pub mock_args: Vec<String>,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            extra_yaml: String::new(),
            tls_ports: vec![443],
            plain_ports: vec![],
            agent: AgentOptions::default(),
            mock_args: Vec::new(),
        }
    }
}

pub struct World {
    pub agent: Agent,
    pub mock: MockProvider,
    /// The mock's address; every name in [`NAMES`] but localhost maps here.
    pub ip: String,
    /// The sandbox's /etc/hosts.
    pub hosts: PathBuf,
    /// Trust bundle with the node CA.
    pub bundle: PathBuf,
}

impl World {
    /// The mock on port 443 and an agent capturing 443, with `extra_yaml`.
    pub fn start(extra_yaml: &str) -> World {
        World::with(WorldOptions {
            extra_yaml: extra_yaml.to_owned(),
            ..WorldOptions::default()
        })
    }

    pub fn with(opts: WorldOptions) -> World {
        let ip = own_loopback();
        let mut args = Vec::new();
        for p in &opts.tls_ports {
            args.extend(["--listen".to_owned(), format!("{ip}:{p}")]);
        }
        for p in &opts.plain_ports {
            args.extend(["--listen-plain".to_owned(), format!("{ip}:{p}")]);
        }
        args.extend(opts.mock_args.iter().cloned());
        args.extend(["--names".to_owned(), NAMES.to_owned()]);
        let (mock, _) = MockProvider::spawn(&args);
        let dir = mock.dir().to_path_buf();
        let hosts = dir.join("hosts");
        let mut text = String::from("127.0.0.1 localhost\n");
        for n in NAMES.split(',').filter(|n| *n != "localhost") {
            text.push_str(&format!("{ip} {n}\n"));
        }
        std::fs::write(&hosts, text).unwrap();
        let mut agent_opts = opts.agent.clone();
        for p in opts.tls_ports.iter().chain(&opts.plain_ports) {
            if !agent_opts.capture_ports.contains(p) {
                agent_opts.capture_ports.push(*p);
            }
        }
        agent_opts.extra_yaml.push_str(&opts.extra_yaml);
        agent_opts.upstream_roots.push(dir.join("ca/ca.crt"));
        // The node's resolver knows the mock under the providers' names,
        // as the sandboxes do (plain-HTTP Host claims are checked by it).
        agent_opts.hosts.get_or_insert_with(|| hosts.clone());
        let agent = Agent::start(agent_opts);
        let bundle = agent.state_dir.join("trust-bundle.pem");
        World {
            agent,
            mock,
            ip,
            hosts,
            bundle,
        }
    }

    /// A sandbox registered with `inv` (and optional traceparent).
    pub fn sandbox(&self, inv: &str, traceparent: Option<&str>) -> SandboxCgroup {
        let id = unique("sb");
        let cg = self.agent.cgroup(&id);
        self.agent.register_with(&id, None, inv, traceparent);
        cg
    }

    /// `program` in the sandbox with the test hosts file and the node CA
    /// trusted (not started).
    pub fn command(&self, cg: &SandboxCgroup, program: &Path) -> Command {
        self.command_with_hosts(cg, program, &self.hosts)
    }

    /// [`Self::command`] with another hosts file.
    pub fn command_with_hosts(&self, cg: &SandboxCgroup, program: &Path, hosts: &Path) -> Command {
        let mut cmd = sandboxed(cg, None, "unshare");
        crate::bind_hosts(&mut cmd, hosts);
        cmd.arg(program);
        // What `egret exec` sets: every client family's CA variable.
        for (var, _) in egret::tls::TRUST_VARIABLES {
            cmd.env(var, &self.bundle);
        }
        cmd
    }

    /// Runs `program args` in the sandbox (see [`Self::command`]); it must
    /// succeed. Returns stdout.
    pub fn run(&self, cg: &SandboxCgroup, program: &Path, args: &[&str]) -> String {
        let out = self
            .command(cg, program)
            .args(args)
            .output()
            .expect("run sandboxed client");
        assert!(
            out.status.success(),
            "{} {:?} failed: {}\n{}\nagent log:\n{}",
            program.display(),
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.agent.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn curl(&self, cg: &SandboxCgroup, args: &[&str]) -> String {
        self.run(
            cg,
            Path::new("/usr/bin/curl"),
            &[&["-sS", "--max-time", "30"], args].concat(),
        )
    }

    /// Runs a Python SDK client from bpf-tests/clients; one JSON value per line.
    pub fn sdk(&self, cg: &SandboxCgroup, script: &str) -> Vec<serde_json::Value> {
        let py = venv_python().expect("venv checked by require_venv");
        let script = crate::clients_dir().join(script);
        self.run(cg, &py, &[script.to_str().unwrap()])
            .lines()
            .map(|l| serde_json::from_str(l).expect("client json line"))
            .collect()
    }

    /// Waits for at least `n` transactions of `inv`.
    pub fn transactions(&self, inv: &str, n: usize) -> Vec<Record> {
        let recs = self
            .agent
            .wait_records("transactions", |r| txns(r, inv).len() >= n);
        txns(&recs, inv).into_iter().cloned().collect()
    }
}

/// Transaction records of `inv`.
pub fn txns<'a>(recs: &'a [Record], inv: &str) -> Vec<&'a Record> {
    recs.iter()
        .filter(|r| r.kind() == "transaction" && r.invocation_id() == Some(inv))
        .collect()
}

/// `fault_server.py` (bpf-tests/clients): an upstream that resets
/// mid-response or answers with a compression bomb.
pub struct FaultServer {
    child: Child,
    /// Compressed size of its gzip bomb.
    pub bomb_bytes: u64,
}

impl FaultServer {
    pub fn start(ip: &str, port: u16) -> FaultServer {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(crate::clients_dir().join("fault_server.py"))
            .args([ip, &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("fault server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let bomb_bytes = line
            .strip_prefix("LISTENING ")
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("fault server said {line:?}"));
        FaultServer { child, bomb_bytes }
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `conn_client.py MODE ARGS` in the sandbox, to completion; its last JSON
/// line.
pub fn conn_client(w: &World, cg: &SandboxCgroup, args: &[&str]) -> serde_json::Value {
    let script = crate::clients_dir().join("conn_client.py");
    let out = w.run(
        cg,
        Path::new("/usr/bin/python3"),
        &[&[script.to_str().unwrap()], args].concat(),
    );
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("conn_client said {out:?}: {e}"))
}
