//! A real Prometheus server for tests (Debian's `prometheus` package):
//! loopback only, a temporary data directory, a free port, scraping one
//! target every second; killed (and the directory removed) on drop.
//!
//! Set `EGRET_PROMETHEUS` to use another binary. With `CI` set, a missing
//! binary is a test failure, not a skip.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Why the server could not start or a query failed.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("prometheus: {0}")]
    Io(#[from] std::io::Error),
    #[error("prometheus did not become ready: {0}")]
    NotReady(String),
    #[error("query {query:?}: {answer}")]
    Query { query: String, answer: String },
}

pub struct PrometheusRig {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl PrometheusRig {
    /// `$EGRET_PROMETHEUS`, else `prometheus` in `/usr/bin` or `PATH`.
    pub fn find_binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("EGRET_PROMETHEUS") {
            return Some(PathBuf::from(p));
        }
        let mut dirs: Vec<PathBuf> = vec!["/usr/bin".into()];
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.into_iter()
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    }

    /// Starts a server scraping `target` (`host:port`, path `/metrics`), or
    /// returns `None` after printing why `test` is skipped (binary missing,
    /// `CI` unset).
    pub fn start_or_skip(test: &str, target: &str) -> Option<PrometheusRig> {
        let Some(bin) = Self::find_binary() else {
            let why = "prometheus not found (apt-get install prometheus, or set EGRET_PROMETHEUS)";
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {why}; CI is set, so this is a failure, not a skip");
            }
            eprintln!("SKIP {test}: {why}");
            return None;
        };
        match Self::start(&bin, target) {
            Ok(p) => Some(p),
            Err(e) => panic!("{test}: {e}"),
        }
    }

    fn start(bin: &std::path::Path, target: &str) -> Result<PrometheusRig, PromError> {
        let dir = std::env::temp_dir().join(crate::unique("egret-prometheus-"));
        std::fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: egret\n  static_configs:\n  - targets: ['{target}']\n"
            ),
        )?;
        let port = crate::free_port();
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let rig = PrometheusRig { child, dir, port };
        let deadline = Instant::now() + crate::patience(Duration::from_secs(30));
        loop {
            if matches!(rig.get("/-/ready"), Ok((200, _))) {
                return Ok(rig);
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(rig.dir.join("prometheus.log")).unwrap_or_default();
                return Err(PromError::NotReady(log));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, body.to_owned()))
    }

    /// An instant query: the `data.result` array, or the server's error
    /// (a PromQL parse error, an unknown function…).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, PromError> {
        let (code, body) = self.get(&format!("/api/v1/query?query={}", encode(expr)))?;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        match (code, v["status"].as_str(), v["data"]["result"].as_array()) {
            (200, Some("success"), Some(r)) => Ok(r.clone()),
            _ => Err(PromError::Query {
                query: expr.to_owned(),
                answer: format!("HTTP {code}: {body}"),
            }),
        }
    }
}

/// Percent-encodes a query parameter (everything but unreserved bytes).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for PrometheusRig {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
