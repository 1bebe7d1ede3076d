//! `egret run`: wires the stages together and runs until SIGTERM/SIGINT.
//!
//! kernel (close events) ─┐
//!                        ├─► records channel (bounded) ─► recorder ─► spool
//! proxy (transactions) ──┘
//!
//! The recorder is the only writer of the spool; everything downstream
//! (ClickHouse, OTLP) reads from the spool or from its tee.
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
};

use crate::{
    api,
    attribution::Registry,
    bpf::{self, Kernel, LoadOptions},
    cgroup,
    config::Config,
    flow,
    proxy::Proxy,
    record::Record,
    store::{Spool, SpoolConfig},
};

/// Capacity of the channel from capture to the recorder.
const RECORD_QUEUE: usize = 65_536;
/// Most records appended (and fsync'd) at once.
const RECORD_BATCH: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("egret run needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")]
    NotRoot,
    #[error("cgroup v2: {0}")]
    Cgroup(std::io::Error),
    #[error("the agent itself is inside the sandbox root {0}; run it outside (its sockets would be redirected to itself)")]
    AgentInSandbox(String),
    #[error("state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bpf(#[from] bpf::BpfError),
    #[error("redirect listener: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
}

/// Resolved node paths shared by the subcommands.
pub struct NodePaths {
    pub cgroup_mount: PathBuf,
    pub sandbox_root: PathBuf,
}

impl NodePaths {
    pub fn resolve(cfg: &Config) -> Result<NodePaths, RunError> {
        let mount = match &cfg.node.cgroup_mount {
            Some(m) => m.clone(),
            None => cgroup::detect_mount().map_err(RunError::Cgroup)?,
        };
        Ok(NodePaths {
            sandbox_root: mount.join(&cfg.node.sandbox_root),
            cgroup_mount: mount,
        })
    }

    /// The sandbox root as it appears in /proc/PID/cgroup, e.g. `/egret.slice`.
    pub fn sandbox_root_rel(&self) -> String {
        format!(
            "/{}",
            self.sandbox_root
                .strip_prefix(&self.cgroup_mount)
                .unwrap_or(&self.sandbox_root)
                .display()
        )
    }
}

pub fn spool_config(cfg: &Config) -> SpoolConfig {
    SpoolConfig {
        dir: cfg.node.state_dir.join("spool"),
        ..SpoolConfig::default()
    }
}

pub async fn run(cfg: Config) -> Result<(), RunError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RunError::NotRoot);
    }
    let paths = NodePaths::resolve(&cfg)?;
    std::fs::create_dir_all(&paths.sandbox_root).map_err(RunError::Cgroup)?;
    let root_rel = paths.sandbox_root_rel();
    let own = cgroup::of_pid(std::process::id()).map_err(RunError::Cgroup)?;
    if own == root_rel || own.starts_with(&format!("{root_rel}/")) {
        return Err(RunError::AgentInSandbox(root_rel));
    }
    let state_dir = &cfg.node.state_dir;
    std::fs::create_dir_all(state_dir).map_err(|source| RunError::StateDir {
        path: state_dir.clone(),
        source,
    })?;

    let kernel = Arc::new(Kernel::load(&LoadOptions {
        bpffs_dir: &cfg.node.bpffs_dir,
        sandbox_root: &paths.sandbox_root,
        root_level: cgroup::level(&paths.cgroup_mount, &paths.sandbox_root),
        listen_port: cfg.node.listen_port,
        capture_ports: &cfg.node.capture_ports,
        block_quic: cfg.node.block_quic,
    })?);
    let root_canon = paths
        .sandbox_root
        .canonicalize()
        .map_err(RunError::Cgroup)?;
    let registry = Arc::new(Registry::open(root_canon, state_dir.join("registry.json")));
    registry.restore(&kernel.maps);

    let spool = Spool::open(&spool_config(&cfg))?;
    let (tx, rx) = mpsc::channel::<Record>(RECORD_QUEUE);
    let recorder = tokio::spawn(record_loop(spool, rx));

    let proxy = Proxy::new(kernel.clone(), registry.clone(), cfg.node.listen_port);
    proxy.ensure_listeners(None).map_err(RunError::Listen)?;
    for sb in registry.list() {
        if let Some(ns) = sb.netns.as_deref().filter(|p| p.exists()) {
            if let Err(e) = proxy.ensure_listeners(Some(ns)) {
                tracing::warn!(sandbox = %sb.id, "reopening netns listeners: {e}");
            }
        }
    }

    let closes = tokio::spawn(flow::run_close_loop(
        kernel.clone(),
        registry.clone(),
        tx.clone(),
    ));
    let api_state = Arc::new(api::ApiState {
        registry: registry.clone(),
        kernel: kernel.clone(),
        proxy: proxy.clone(),
        sandbox_root_rel: root_rel.clone(),
    });
    let api_path = cfg.node.api_socket.clone();
    let api_task = tokio::spawn(async move { api::serve(&api_path, api_state).await });
    if let Some(logger) = kernel
        .logger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        tokio::spawn(poll_kernel_log(logger));
    }

    tracing::info!(
        sandbox_root = %paths.sandbox_root.display(),
        programs = ?kernel.attachment,
        api = %cfg.node.api_socket.display(),
        listen_port = cfg.node.listen_port,
        "egret running"
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Listen)?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        r = api_task => {
            if let Ok(Err(e)) = r { return Err(e.into()); }
        }
    }
    tracing::info!("shutting down: flushing records");
    closes.abort();
    drop(tx);
    drop(proxy);
    let _ = tokio::time::timeout(Duration::from_secs(10), recorder).await;
    let _ = std::fs::remove_file(&cfg.node.api_socket);
    Ok(())
}

/// Drains aya-log messages from the kernel half (they arrive on a ring
/// buffer that must be polled) into the agent's log.
async fn poll_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the AsyncFd owns the logger and with it the ring buffer fd.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(
                "kernel log polling unavailable: {}",
                std::io::Error::from(e)
            );
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// The only writer of the spool: batches what arrives and appends it.
async fn record_loop(mut spool: Spool, mut rx: mpsc::Receiver<Record>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, RECORD_BATCH).await == 0 {
            return;
        }
        // fsync blocks: keep it off the runtime's worker threads' hot path.
        match tokio::task::block_in_place(|| spool.append(&batch)) {
            Ok(out) if out.dropped > 0 => {
                tracing::warn!(dropped = out.dropped, "spool full: records dropped")
            }
            Ok(_) => {}
            Err(e) => tracing::error!("spool append failed: {e}"),
        }
    }
}
