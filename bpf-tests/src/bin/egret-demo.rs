//! The first-run demo behind `cargo xtask demo`.
//!
//! Starts ClickHouse (Debian's server, loopback, temporary data dir), a
//! local HTTPS stand-in for the LLM providers (`mock-provider`, speaking
//! their real wire formats), and `egret run` on the embedded default
//! (sandbox root `egret.slice`, ports 80/443 captured, default gateway) with
//! only three keys set: a temporary state dir, the mock's CA as an extra
//! upstream root, and ClickHouse as the store. Then a sandbox made by
//! `egret exec` calls the providers' real hostnames with the official
//! OpenAI and Anthropic Python SDKs (streaming and not), and the captured
//! transactions are printed from ClickHouse. Everything is removed at the
//! end, including the kernel programs.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use bpf_tests::clickhouse_rig::ClickHouseRig;

/// Loopback address the mock provider serves the provider names on.
const PROVIDER_IP: &str = "127.0.0.77";

struct Cleanup {
    agent: Option<Child>,
    mock: Option<Child>,
    egret: PathBuf,
    config: PathBuf,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(a.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = a.wait();
        }
        if let Some(mut m) = self.mock.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
        // Detach the kernel programs the demo's agent left attached.
        let _ = Command::new(&self.egret)
            .arg("--config")
            .arg(&self.config)
            .arg("uninstall")
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn step(msg: &str) {
    println!("\n==> {msg}");
}

fn bin(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| bpf_tests::workspace_root().join(default))
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn run() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the demo attaches kernel programs: run it as root".into());
    }
    let egret = bin("EGRET_BIN", "target/release/egret");
    let mock_bin = bin("MOCK_BIN", "target/release/mock-provider");
    let venv = std::env::var_os("EGRET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| bpf_tests::workspace_root().join(".venv"));
    let python = venv.join("bin/python");
    for p in [&egret, &mock_bin, &python] {
        if !p.exists() {
            return Err(format!(
                "{} missing (cargo xtask demo builds and installs it)",
                p.display()
            ));
        }
    }
    if std::os::unix::net::UnixStream::connect("/run/egret/api.sock").is_ok() {
        return Err(
            "an egret agent is already running on this host (/run/egret/api.sock); stop it first"
                .into(),
        );
    }
    let dir = std::env::temp_dir().join(format!("egret-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("egret.yaml");
    let mut cleanup = Cleanup {
        agent: None,
        mock: None,
        egret: egret.clone(),
        config: config.clone(),
        dir: dir.clone(),
    };

    step("Starting ClickHouse (Debian clickhouse-server, loopback, temporary data dir)");
    let ch = ClickHouseRig::start().map_err(|e| e.to_string())?;
    println!("    {}", ch.url());

    step(&format!("Starting the mock LLM provider on {PROVIDER_IP}:443 (Anthropic/OpenAI/Google wire formats)"));
    let ready = dir.join("mock.ready");
    cleanup.mock = Some(
        Command::new(&mock_bin)
            .args(["--listen", &format!("{PROVIDER_IP}:443")])
            .arg("--ca-dir")
            .arg(dir.join("mock-ca"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--stream-delay-ms")
            .arg("20")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting mock-provider: {e}"))?,
    );
    wait_for("the mock provider", Duration::from_secs(20), || {
        ready.exists()
    })?;

    step("Starting `egret run` on the embedded default (+ state dir, mock CA, ClickHouse)");
    let yaml = format!(
        "# Everything not set here is egret's embedded default.\nnode:\n  stateDir: {}\n  upstreamExtraRoots: [{}]\nstore:\n  clickhouse:\n    url: {}\n    flushInterval: 200ms\n",
        dir.join("state").display(),
        dir.join("mock-ca/ca.crt").display(),
        ch.url()
    );
    std::fs::write(&config, &yaml).map_err(|e| e.to_string())?;
    print!("{yaml}");
    let log = std::fs::File::create(dir.join("agent.log")).map_err(|e| e.to_string())?;
    cleanup.agent = Some(
        Command::new(&egret)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting egret: {e}"))?,
    );
    wait_for("the agent", Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect("/run/egret/api.sock").is_ok()
    })
    .map_err(|e| {
        format!(
            "{e}; agent log:\n{}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        )
    })?;

    step("Running a sandbox: `egret exec` → official OpenAI + Anthropic SDKs against the real hostnames");
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{PROVIDER_IP} api.openai.com api.anthropic.com generativelanguage.googleapis.com\n"),
    )
    .map_err(|e| e.to_string())?;
    let client = bpf_tests::clients_dir().join("demo_client.py");
    // The sandbox resolves the providers' names to the mock through a
    // private /etc/hosts: `egret exec` runs in a mount namespace of its own
    // with it bound in (the workload itself may not mount: it runs without
    // CAP_SYS_ADMIN), and the workload inherits it.
    let mut exec = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(&hosts)
        .arg(&egret)
        .arg("--config")
        .arg(&config)
        .args([
            "exec",
            "--agent-name",
            "demo-agent",
            "--agent-namespace",
            "demo",
            "--agent-kind",
            "python",
            "--",
        ])
        .arg(&python)
        .arg(&client)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("egret exec: {e}"))?;
    let mut invocation = None;
    for line in BufReader::new(exec.stderr.take().ok_or("no stderr")?).lines() {
        let line = line.map_err(|e| e.to_string())?;
        eprintln!("{line}");
        if let Some(id) = line.strip_prefix("egret: invocation ") {
            invocation = Some(id.trim().to_owned());
        }
    }
    let st = exec.wait().map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("the sandbox's client failed ({st})"));
    }
    let inv = invocation.ok_or("egret exec printed no invocation id")?;

    step(&format!(
        "What egret captured for invocation {inv} (from ClickHouse)"
    ));
    let mut out = String::new();
    wait_for("records in ClickHouse", Duration::from_secs(30), || {
        let o = Command::new(&egret)
            .arg("--config")
            .arg(&config)
            .args(["records", "--invocation-id", &inv])
            .output();
        match o {
            Ok(o) if o.status.success() => {
                out = String::from_utf8_lossy(&o.stdout).into_owned();
                out.matches(" transaction ").count() >= 3 && out.contains(" flow ")
            }
            _ => false,
        }
    })?;
    print!("{out}");

    step("Where to look next (with your own `egret run`; the demo removes its services now)");
    println!("    egret records --invocation-id {inv} --json     # every attribute, one JSON object per record");
    println!("    egret tail                                    # live view while sandboxes run");
    println!("    clickhouse-client --port {} -q \"SELECT gen_ai_request_model, gen_ai_usage_input_tokens, gen_ai_usage_output_tokens FROM egret.transactions FINAL WHERE invocation_id = '{inv}'\"", ch.tcp_port());
    println!(
        "    curl -s 127.0.0.1:9464/metrics               # Prometheus metrics (admin listener)"
    );
    println!("    docs/getting-started.md, docs/debugging.md");
    drop(cleanup);
    drop(ch);
    println!("\nDemo finished; agent, kernel programs, mock provider and ClickHouse were removed.");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
