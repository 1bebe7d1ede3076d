//! Configuration hot reload: on SIGHUP or when the file's content changes
//! (polled, so Kubernetes ConfigMap symlink swaps are seen too).
//!
//! A new file is parsed and validated completely before anything changes;
//! an invalid file is rejected with its error and the running config stays
//! in force. What applies live: gateways (policy, routes, budgets, body
//! capture, OTLP exporters) for new transactions, and the kernel's capture
//! ports and QUIC refusal for new connections. Established connections and
//! queued records are untouched. Settings that need a restart
//! (`node.listenPort`, `node.sandboxRoot`, state/bpffs/API/admin paths,
//! `node.proxyProtocol` (trusted dialers), `store`) are reported and keep
//! their running values.
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use arc_swap::ArcSwap;

use crate::{
    bpf::{BpfError, Kernel, KernelSettings},
    config::{Config, ConfigError},
    policy::Policy,
    proxy::L7,
    sink::otlp::{self, OtlpError, OtlpSinks},
};

const POLL: Duration = Duration::from_secs(1);

/// Reload outcome, for `/status` and metrics.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    /// Incremented on every applied config (1 = the one loaded at start).
    pub generation: AtomicU64,
    pub applied: AtomicU64,
    pub rejected: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl ReloadStatus {
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Why a reload was rejected (the running config stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("otlp: {0}")]
    Otlp(#[from] OtlpError),
    #[error("updating kernel settings: {0}")]
    Kernel(#[source] BpfError),
    #[error(transparent)]
    Pricing(#[from] crate::cost::CostError),
    #[error(transparent)]
    Redaction(#[from] crate::redact::RedactError),
}

/// Everything a reload updates.
pub struct Targets {
    pub path: PathBuf,
    pub running: Config,
    pub l7: Arc<L7>,
    pub kernel: Arc<Kernel>,
    pub root_level: u32,
    pub otlp: Arc<ArcSwap<OtlpSinks>>,
    /// The recorder's `redaction` rules.
    pub redaction: Arc<ArcSwap<crate::redact::Redactor>>,
    pub dev_tee: Option<String>,
    pub status: Arc<ReloadStatus>,
}

/// Keys whose changes only take effect after a restart.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.node, &new.node);
    let mut v = Vec::new();
    if a.listen_port != b.listen_port {
        v.push("node.listenPort");
    }
    if a.sandbox_root != b.sandbox_root || a.cgroup_mount != b.cgroup_mount {
        v.push("node.sandboxRoot/cgroupMount");
    }
    if a.state_dir != b.state_dir || a.bpffs_dir != b.bpffs_dir || a.api_socket != b.api_socket {
        v.push("node.stateDir/bpffsDir/apiSocket");
    }
    if a.admin_listen != b.admin_listen {
        v.push("node.adminListen");
    }
    if a.upstream_extra_roots != b.upstream_extra_roots {
        v.push("node.upstreamExtraRoots");
    }
    if a.proxy_protocol != b.proxy_protocol {
        v.push("node.proxyProtocol");
    }
    if a.limits != b.limits {
        v.push("node.limits");
    }
    if a.drain_timeout != b.drain_timeout {
        v.push("node.drainTimeout");
    }
    if a.metrics != b.metrics {
        // The OTLP exporters, rebuilt on reload, take it at once.
        v.push("node.metrics (for /metrics)");
    }
    if old.store != new.store {
        v.push("store");
    }
    v
}

impl Targets {
    /// Loads and applies the file; Err keeps the running config.
    pub async fn reload(&mut self) -> Result<(), ReloadError> {
        let new = Config::load(&self.path)?;
        let prices = crate::cost::Prices::new(&new.pricing)?;
        let sinks = otlp::sinks_from_env(&new, self.dev_tee.as_deref())?;
        let redactor = crate::redact::Redactor::new(&new.redaction)?;
        let n = &new.node;
        self.kernel
            .maps
            .configure(&KernelSettings {
                listen_port: self.running.node.listen_port,
                udp_ports: n.udp_ports(),
                udp_all_but_dns: n.block_all_udp_except_dns,
                block_raw: n.block_raw_sockets,
                max_sockets_per_sandbox: n.max_sockets_per_sandbox,
                max_pending_closes_per_sandbox: n.max_pending_closes_per_sandbox,
                root_level: self.root_level,
                capture_ports: n.capture_ports.clone(),
                guarded: self.running.node.guarded_endpoints(),
                agent_netns: self.kernel.agent_netns,
            })
            .map_err(ReloadError::Kernel)?;
        self.l7.policy.store(Arc::new(Policy::new(&new)));
        self.l7.prices.store(Arc::new(prices));
        self.redaction.store(Arc::new(redactor));
        let old = self.otlp.swap(Arc::new(sinks));
        tokio::spawn(async move { old.shutdown(Duration::from_secs(5)).await });
        for key in restart_only(&self.running, &new) {
            tracing::warn!("config reload: {key} changed; it applies after a restart");
        }
        // Keep the values that did not apply, so the next comparison is honest.
        let mut applied = new;
        applied.node.listen_port = self.running.node.listen_port;
        applied.node.sandbox_root = self.running.node.sandbox_root.clone();
        applied.node.cgroup_mount = self.running.node.cgroup_mount.clone();
        applied.node.state_dir = self.running.node.state_dir.clone();
        applied.node.bpffs_dir = self.running.node.bpffs_dir.clone();
        applied.node.api_socket = self.running.node.api_socket.clone();
        applied.node.admin_listen = self.running.node.admin_listen;
        applied.node.upstream_extra_roots = self.running.node.upstream_extra_roots.clone();
        applied.node.proxy_protocol = self.running.node.proxy_protocol.clone();
        applied.node.drain_timeout = self.running.node.drain_timeout;
        applied.node.metrics = self.running.node.metrics.clone();
        applied.store = self.running.store.clone();
        self.running = applied;
        Ok(())
    }

    /// Watches the file and SIGHUP until the task is dropped.
    pub async fn run(mut self) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("no SIGHUP reload: {e}");
                None
            }
        };
        let mut last = std::fs::read(&self.path).ok();
        let mut tick = tokio::time::interval(POLL);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let now = std::fs::read(&self.path).ok();
            if !forced && now == last {
                continue;
            }
            last = now;
            match self.reload().await {
                Ok(()) => {
                    let g = self.status.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    self.status.applied.fetch_add(1, Ordering::Relaxed);
                    *self
                        .status
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = None;
                    tracing::info!(generation = g, path = %self.path.display(), "config reloaded");
                }
                Err(e) => {
                    self.status.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(path = %self.path.display(), "config reload rejected, previous config stays in force: {e}");
                    *self
                        .status
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
            }
        }
    }
}

impl crate::admin::Report for ReloadStatus {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        m.counter(
            "egret_config_reloads",
            "Config reloads, by result (rejected: the old config stayed in force)",
            &[
                (
                    vec![("result", "applied".into())],
                    self.applied.load(Ordering::Relaxed),
                ),
                (
                    vec![("result", "rejected".into())],
                    self.rejected.load(Ordering::Relaxed),
                ),
            ],
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        s.insert(
            "config".into(),
            serde_json::json!({
                "generation": self.generation.load(Ordering::Relaxed),
                "reloads_applied": self.applied.load(Ordering::Relaxed),
                "reloads_rejected": self.rejected.load(Ordering::Relaxed),
                "last_reload_error": self.last_error(),
            }),
        );
    }
}
