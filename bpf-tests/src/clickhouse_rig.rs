//! A real `clickhouse-server` for tests: loopback only, a temporary data
//! directory, free ports, stopped (and the directory removed) on drop.
//!
//! ```no_run
//! let Some(ch) = bpf_tests::clickhouse_rig::ClickHouseRig::start_or_skip("my_test") else {
//!     return; // binary missing and not in CI: skip reason printed
//! };
//! assert_eq!(ch.query("SELECT 1").unwrap().trim(), "1");
//! ```
//!
//! Works with Debian's 18.16 package (`/usr/sbin/clickhouse-server`) and with
//! current single-binary builds (`clickhouse server`). Set
//! `EGRET_CLICKHOUSE_SERVER` to use another binary. With `CI` set, a missing
//! binary is a test failure, not a skip.
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Rig failures, with enough context to debug a server that did not start.
#[derive(Debug)]
pub struct RigError(String);

impl fmt::Display for RigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RigError {}

pub(crate) fn err(msg: impl Into<String>) -> RigError {
    RigError(msg.into())
}

/// A running (or stopped, restartable) ClickHouse server.
pub struct ClickHouseRig {
    binary: PathBuf,
    dir: PathBuf,
    http_port: u16,
    tcp_port: u16,
    /// Replica-to-replica part fetches (cluster nodes only).
    interserver_port: Option<u16>,
    /// More top-level config elements (cluster nodes: remote_servers,
    /// zookeeper, macros, distributed_ddl).
    extra_config: String,
    /// Seconds the server keeps an idle HTTP connection open.
    keep_alive_secs: u32,
    child: Option<Child>,
}

impl ClickHouseRig {
    /// The server binary: `$EGRET_CLICKHOUSE_SERVER`, else
    /// `clickhouse-server` or `clickhouse` in the usual places / `PATH`.
    pub fn find_binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("EGRET_CLICKHOUSE_SERVER") {
            return Some(PathBuf::from(p));
        }
        let mut dirs: Vec<PathBuf> = vec!["/usr/sbin".into(), "/usr/bin".into()];
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        for name in ["clickhouse-server", "clickhouse"] {
            for d in &dirs {
                let p = d.join(name);
                if p.is_file() {
                    return Some(p);
                }
            }
        }
        None
    }

    /// Starts a server, or returns `None` after printing why the calling
    /// test is skipped (binary missing, `CI` unset). Panics if `CI` is set
    /// and the binary is missing, or if the server fails to start.
    pub fn start_or_skip(test: &str) -> Option<ClickHouseRig> {
        if Self::find_binary().is_none() {
            let why = "clickhouse-server not found (apt-get install clickhouse-server, \
                       or set EGRET_CLICKHOUSE_SERVER)";
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {why}; CI is set, so this is a failure, not a skip");
            }
            eprintln!("SKIP {test}: {why}");
            return None;
        }
        match Self::start() {
            Ok(rig) => Some(rig),
            Err(e) => panic!("{test}: cannot start clickhouse-server: {e}"),
        }
    }

    /// Starts a server on free loopback ports with a fresh data directory.
    /// The ports are free when chosen but another process (a parallel test)
    /// can take one before the server binds it: then it tries new ports.
    pub fn start() -> Result<ClickHouseRig, RigError> {
        let mut attempts = 1;
        loop {
            match Self::start_once() {
                Err(e) if attempts < 4 && e.to_string().contains("Address already in use") => {
                    attempts += 1;
                }
                r => return r,
            }
        }
    }

    fn start_once() -> Result<ClickHouseRig, RigError> {
        let binary = Self::find_binary().ok_or_else(|| err("clickhouse-server not found"))?;
        let dir = unique_temp_dir()?;
        let mut rig = ClickHouseRig {
            binary,
            dir,
            http_port: free_port()?,
            tcp_port: free_port()?,
            interserver_port: None,
            extra_config: String::new(),
            keep_alive_secs: 1,
            child: None,
        };
        rig.write_config()?;
        rig.start_again()?;
        Ok(rig)
    }

    /// A server not started yet, on the given ports, with `extra_config`
    /// added to its config (a cluster node; see [`crate::clickhouse_cluster`]).
    pub(crate) fn prepare(
        http_port: u16,
        tcp_port: u16,
        interserver_port: u16,
        extra_config: String,
    ) -> Result<ClickHouseRig, RigError> {
        let binary = Self::find_binary().ok_or_else(|| err("clickhouse-server not found"))?;
        let rig = ClickHouseRig {
            binary,
            dir: unique_temp_dir()?,
            http_port,
            tcp_port,
            interserver_port: Some(interserver_port),
            extra_config,
            // Longer than the clickhouse crate's 2 s pool idle timeout: ON
            // CLUSTER statements leave pooled connections idle long enough
            // for a shorter server timeout to close one as it is reused.
            keep_alive_secs: 3,
            child: None,
        };
        rig.write_config()?;
        Ok(rig)
    }

    /// `http://127.0.0.1:<port>`, for the `clickhouse` crate / agent config.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The temporary directory holding data, config and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// (Re)starts the server on the same ports and data directory and waits
    /// until `/ping` answers.
    pub fn start_again(&mut self) -> Result<(), RigError> {
        self.spawn()?;
        self.wait_ready(Duration::from_secs(60))
    }

    /// Starts the process (if not running) without waiting for it.
    pub(crate) fn spawn(&mut self) -> Result<(), RigError> {
        if self.is_running() {
            return Ok(());
        }
        let out = fs::File::create(self.dir.join("server.out"))
            .map_err(|e| err(format!("create server.out: {e}")))?;
        let out2 = out
            .try_clone()
            .map_err(|e| err(format!("dup server.out: {e}")))?;
        let mut cmd = Command::new(&self.binary);
        if self.binary.file_name().is_some_and(|n| n == "clickhouse") {
            cmd.arg("server");
        }
        cmd.arg(format!(
            "--config-file={}",
            self.dir.join("config.xml").display()
        ))
        .current_dir(&self.dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(out2);
        let child = cmd
            .spawn()
            .map_err(|e| err(format!("spawn {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the process started by [`spawn`](Self::spawn) answers
    /// `/ping`; stops it and fails after `timeout` or if it exits.
    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> Result<(), RigError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(err(format!(
                    "clickhouse-server exited with {status} during startup:\n{}",
                    self.log_tail()
                )));
            }
            if let Ok((200, body)) = self.http("GET", "/ping", "") {
                if body.starts_with("Ok") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(err(format!(
                    "clickhouse-server not ready after {timeout:?}:\n{}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 20 s). Data is kept, so
    /// [`start_again`](Self::start_again) brings it back.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends SIGTERM without waiting (so several servers stop in parallel;
    /// [`stop`](Self::stop) then waits).
    pub(crate) fn terminate(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// Kills the server with SIGKILL (a crash). Data already acknowledged
    /// survives; [`start_again`](Self::start_again) brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `sql` over HTTP; returns the response body (TSV by default).
    pub fn query(&self, sql: &str) -> Result<String, RigError> {
        match self.http("POST", "/", sql) {
            Ok((200, body)) => Ok(body),
            Ok((code, body)) => Err(err(format!("HTTP {code} for {sql:?}: {}", body.trim()))),
            Err(e) => Err(err(format!("query {sql:?}: {e}"))),
        }
    }

    /// [`query`](Self::query) parsed as one unsigned integer (e.g. `count()`).
    pub fn query_u64(&self, sql: &str) -> Result<u64, RigError> {
        let body = self.query(sql)?;
        body.trim()
            .parse()
            .map_err(|_| err(format!("{sql:?} returned {body:?}, not a number")))
    }

    fn http(&self, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.http_port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP header end"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        Ok((code, body.to_owned()))
    }

    pub(crate) fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["server.out", "server.err.log"] {
            if let Ok(text) = fs::read_to_string(self.dir.join(name)) {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(20);
                out.push_str(&format!("--- {name}\n{}\n", lines[from..].join("\n")));
            }
        }
        out
    }

    fn write_config(&self) -> Result<(), RigError> {
        let d = self.dir.display();
        for sub in ["data", "tmp", "user_files", "format_schemas"] {
            fs::create_dir_all(self.dir.join(sub))
                .map_err(|e| err(format!("create {d}/{sub}: {e}")))?;
        }
        let interserver = self
            .interserver_port
            .map(|p| {
                format!(
                    "<interserver_http_port>{p}</interserver_http_port>\n  \
                     <interserver_http_host>127.0.0.1</interserver_http_host>"
                )
            })
            .unwrap_or_default();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{d}/server.log</log>
    <errorlog>{d}/server.err.log</errorlog>
    <size>10M</size>
    <count>1</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
  <mlock_executable>false</mlock_executable>
  <!-- Tests stop servers often: don't wait 5 s for idle keep-alive clients. -->
  <shutdown_wait_unfinished>1</shutdown_wait_unfinished>
  <keep_alive_timeout>{keep_alive}</keep_alive_timeout>
  <timezone>UTC</timezone>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <users_config>{d}/users.xml</users_config>
  {interserver}
{extra}
</yandex>
"#,
            http = self.http_port,
            tcp = self.tcp_port,
            extra = self.extra_config,
            keep_alive = self.keep_alive_secs,
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default></default></quotas>
</yandex>
"#;
        fs::write(self.dir.join("config.xml"), config)
            .and_then(|()| fs::write(self.dir.join("users.xml"), users))
            .map_err(|e| err(format!("write config in {d}: {e}")))
    }
}

impl Drop for ClickHouseRig {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("EGRET_KEEP_CLICKHOUSE_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

pub(crate) fn free_port() -> Result<u16, RigError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| err(format!("find a free port: {e}")))
}

pub(crate) fn unique_temp_dir() -> Result<PathBuf, RigError> {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "egret-clickhouse-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).map_err(|e| err(format!("create {}: {e}", dir.display())))?;
    Ok(dir)
}
