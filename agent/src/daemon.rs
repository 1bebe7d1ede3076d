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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use tokio::sync::broadcast;

use crate::{
    admin::{self, AdminState},
    api,
    attribution::{Attribution, Registry},
    bpf::{self, Kernel, LoadOptions},
    budget::Budgets,
    cgroup,
    config::Config,
    credentials::KeyHasher,
    flow,
    policy::Policy,
    proxy::{
        trusted::{Trusted, TrustedError, TrustedOptions},
        Proxy, L7,
    },
    record::Record,
    record::RecordStats,
    reload::{self, ReloadStatus},
    semconv as sc,
    sink::{self, otlp::OtlpSinks, ClickHouseSink},
    store::Spool,
    tls::{self, Ca, LeafCache, LeafCacheOptions, Terminator, UpstreamTls, UpstreamTlsOptions},
};

/// Mode of `node.stateDir`: only root lists it or opens what it holds,
/// except `trust-bundle.pem` (0644), which non-root sandboxes open by name
/// (`SSL_CERT_FILE`), hence the search bit for others. Everything private
/// in it is 0600 or in a 0700 directory (`ca/`, `spool/`).
pub const STATE_DIR_MODE: u32 = 0o711;

/// Capacity of the channel from capture to the recorder.
const RECORD_QUEUE: usize = 65_536;
/// Most records appended (and fsync'd) at once.
const RECORD_BATCH: usize = 4_096;
/// Least time between two spool appends: records arriving meanwhile join
/// the next batch, so a busy proxy pays one write + fdatasync per batch,
/// not per record (group commit). Records reach exporters at most this
/// much later.
const RECORD_LINGER: Duration = Duration::from_millis(5);
/// Records buffered for `egret tail` viewers; slower viewers skip ahead.
const TAIL_BUFFER: usize = 4_096;
/// After spool appends failed, how long they must keep succeeding before
/// the spool is reported writable again (one log line per episode).
const SPOOL_RECOVERY_QUIET: Duration = Duration::from_secs(5);

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
    #[error("state dir: {0}")]
    StateFile(#[from] crate::statefile::StateFileError),
    #[error(transparent)]
    Registry(#[from] crate::attribution::RegistryError),
    #[error(transparent)]
    Bpf(#[from] bpf::BpfError),
    #[error("redirect listener: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    ProxyProtocol(#[from] TrustedError),
    #[error("config: {0}")]
    Config(#[source] crate::config::ValidationError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("ClickHouse: {0}")]
    Sink(#[from] sink::SinkError),
    #[error("OTLP: {0}")]
    Otlp(#[from] sink::otlp::OtlpError),
    #[error("recorder thread: {0}")]
    Recorder(std::io::Error),
    #[error("admin listener: {0}")]
    Admin(std::io::Error),
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

/// Options of `egret run` beyond the config file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Every signal of every gateway is also sent here (dev tee).
    pub dev_otlp_fallback_endpoint: Option<String>,
    /// The config file, watched for hot reload (None: embedded default).
    pub config_path: Option<PathBuf>,
}

pub async fn run(cfg: Config, opts: RunOptions) -> Result<(), RunError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RunError::NotRoot);
    }
    let fd_limit = raise_fd_limit();
    let paths = NodePaths::resolve(&cfg)?;
    std::fs::create_dir_all(&paths.sandbox_root).map_err(RunError::Cgroup)?;
    let root_rel = paths.sandbox_root_rel();
    let own = cgroup::of_pid(std::process::id()).map_err(RunError::Cgroup)?;
    if own == root_rel || own.starts_with(&format!("{root_rel}/")) {
        return Err(RunError::AgentInSandbox(root_rel));
    }
    let state_dir = &cfg.node.state_dir;
    crate::statefile::ensure_dir(state_dir, STATE_DIR_MODE)?;

    let root_level = cgroup::level(&paths.cgroup_mount, &paths.sandbox_root);
    let guarded = cfg.node.guarded_endpoints();
    let udp_ports = cfg.node.udp_ports();
    let kernel = Arc::new(Kernel::load(&LoadOptions {
        bpffs_dir: &cfg.node.bpffs_dir,
        sandbox_root: &paths.sandbox_root,
        root_level,
        listen_port: cfg.node.listen_port,
        capture_ports: &cfg.node.capture_ports,
        udp_ports: &udp_ports,
        udp_all_but_dns: cfg.node.block_all_udp_except_dns,
        block_raw: cfg.node.block_raw_sockets,
        max_sockets_per_sandbox: cfg.node.max_sockets_per_sandbox,
        max_pending_closes_per_sandbox: cfg.node.max_pending_closes_per_sandbox,
        guarded: &guarded,
    })?);
    let root_canon = paths
        .sandbox_root
        .canonicalize()
        .map_err(RunError::Cgroup)?;
    let registry = Arc::new(Registry::open(
        root_canon.clone(),
        state_dir.join("registry.json"),
    )?);
    registry.restore(&kernel.maps)?;

    let shutdown = CancellationToken::new();
    let spool = Spool::open(&cfg.store.spool_or_default(state_dir))?;
    let spool_handle = spool.handle();
    let mut sinks = Vec::new();
    let mut clickhouse_status = None;
    match &cfg.store.clickhouse {
        Some(ch) => {
            let cursor = spool.cursor(sink::clickhouse::CURSOR_NAME)?;
            let sink = ClickHouseSink::new(ch)?.with_dead_letter(sink::clickhouse::DeadLetter {
                path: state_dir.join(sink::clickhouse::DEAD_LETTER_FILE),
                max_bytes: sink::clickhouse::DEAD_LETTER_MAX_BYTES,
            });
            clickhouse_status = Some(sink.status_handle());
            sinks.push(tokio::spawn(sink.run(cursor, shutdown.child_token())));
        }
        None => {
            // A cursor left by an earlier config would pin data forever.
            spool
                .handle()
                .remove_cursor(sink::clickhouse::CURSOR_NAME)?;
        }
    }
    let otlp = sink::otlp::sinks_from_env(&cfg, opts.dev_otlp_fallback_endpoint.as_deref())?;
    let otlp = Arc::new(arc_swap::ArcSwap::from_pointee(otlp));
    let (tx, rx) = mpsc::channel::<Record>(RECORD_QUEUE);
    let (tail, _) = broadcast::channel::<Arc<Record>>(TAIL_BUFFER);
    let record_stats = Arc::new(RecordStats::default());
    let reload_status = Arc::new(ReloadStatus::default());
    reload_status.generation.store(1, Ordering::Relaxed);

    let tls = tls_setup(&cfg)?;
    let l7 = Arc::new(L7 {
        policy: arc_swap::ArcSwap::from_pointee(Policy::new(&cfg)),
        budgets: Arc::new(Budgets::open(Some(state_dir.join("budgets.json")))),
        terminator: tls.0,
        upstream_tls: tls.1,
        keys: Arc::new(
            KeyHasher::open(&state_dir.join("apikey-id.secret")).map_err(|source| {
                RunError::StateDir {
                    path: state_dir.join("apikey-id.secret"),
                    source,
                }
            })?,
        ),
        records: tx.clone(),
        dropped_records: AtomicU64::new(0),
        resolver: Default::default(),
        admission: crate::proxy::admission::Admission::new(cfg.node.limits.clone()),
        queue_shares: record_stats.queue.clone(),
        drain: Default::default(),
    });
    let recorder = spawn_recorder(
        spool,
        rx,
        Recorder {
            stamp: {
                let l7 = l7.clone();
                Box::new(move |rec: &mut Record| stamp_gateway(&l7, rec))
            },
            otlp: otlp.clone(),
            tail: tail.clone(),
            stats: record_stats.clone(),
        },
        shutdown.child_token(),
    )
    .map_err(RunError::Recorder)?;
    let proxy = Proxy::new(
        kernel.clone(),
        registry.clone(),
        l7.clone(),
        cfg.node.listen_port,
    );
    proxy
        .ensure_listeners(None, "agent")
        .map_err(RunError::Listen)?;
    let pp = &cfg.node.proxy_protocol;
    let trusted = Trusted::new(
        proxy.clone(),
        kernel.clone(),
        TrustedOptions {
            listen: pp.listen,
            unix_socket: pp.unix_socket.clone(),
            trusted_cidrs: pp.cidrs().map_err(RunError::Config)?,
            cgroup_mount: paths
                .cgroup_mount
                .canonicalize()
                .map_err(RunError::Cgroup)?,
            sandbox_root: root_canon.clone(),
        },
    );
    let trusted_tasks = trusted.start()?;
    for sb in registry.list() {
        if let Some(ns) = sb.netns.as_deref().filter(|p| p.exists()) {
            if let Err(e) = proxy.ensure_listeners(Some(ns), &sb.id) {
                tracing::warn!(sandbox = %sb.id, "reopening netns listeners: {e}");
            }
        }
    }

    let closes_stop = CancellationToken::new();
    let closes = tokio::spawn(flow::run_close_loop(
        kernel.clone(),
        registry.clone(),
        tx.clone(),
        record_stats.clone(),
        closes_stop.clone(),
    ));
    let api_state = Arc::new(api::ApiState {
        registry: registry.clone(),
        kernel: kernel.clone(),
        proxy: proxy.clone(),
        sandbox_root_rel: root_rel.clone(),
        tail: tail.clone(),
        tail_lagged: record_stats.clone(),
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

    let admin_state = Arc::new(AdminState {
        kernel: kernel.clone(),
        registry: registry.clone(),
        proxy: proxy.clone(),
        l7: l7.clone(),
        spool: spool_handle,
        clickhouse: clickhouse_status,
        otlp: otlp.clone(),
        records: record_stats.clone(),
        reload: reload_status.clone(),
        trusted: trusted.clone(),
        ready: AtomicBool::new(false),
    });
    if let Some(path) = opts.config_path.clone() {
        tokio::spawn(
            reload::Targets {
                path,
                running: cfg.clone(),
                l7: l7.clone(),
                kernel: kernel.clone(),
                root_level,
                otlp: otlp.clone(),
                dev_tee: opts.dev_otlp_fallback_endpoint.clone(),
                status: reload_status.clone(),
            }
            .run(),
        );
    }
    tokio::spawn(trim_heap(shutdown.child_token()));
    tokio::spawn(watch_node_addrs(kernel.clone(), shutdown.child_token()));
    let admin_task = admin::serve(cfg.node.admin_listen, admin_state.clone())
        .await
        .map_err(RunError::Admin)?;
    admin_state.ready.store(true, Ordering::Relaxed);

    tracing::info!(
        sandbox_root = %paths.sandbox_root.display(),
        admin = %cfg.node.admin_listen,
        programs = ?kernel.attachment,
        api = %cfg.node.api_socket.display(),
        listen_port = cfg.node.listen_port,
        fd_limit,
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
    admin_state.ready.store(false, Ordering::Relaxed);
    // Trusted dialers stop being accepted along with everything else.
    for t in trusted_tasks {
        t.abort();
    }
    trusted.cleanup();
    drop(trusted);
    let grace = cfg.node.drain_timeout;
    tracing::info!(?grace, "shutting down: draining connections");
    let drained = l7.drain.run(grace).await;
    if drained.forced > 0 {
        tracing::warn!(
            in_flight = drained.in_flight,
            closed = drained.forced,
            "drain bound reached: connections closed (their transactions are recorded with error.type=agent_shutdown)"
        );
    } else {
        tracing::info!(in_flight = drained.in_flight, "connections drained");
    }
    tracing::info!("shutting down: flushing records");
    // The close events the kernel has queued so far become flow records
    // now; later ones stay in the pinned ring buffer for the next start.
    closes_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), closes).await;
    drop(tx);
    drop(proxy);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), recorder).await;
    // Budget usage of the last transactions reaches the disk.
    let budgets = l7.budgets.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || budgets.flush()),
    )
    .await;
    for s in sinks {
        let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
    }
    otlp.load().shutdown(Duration::from_secs(5)).await;
    admin_task.abort();
    let _ = std::fs::remove_file(&cfg.node.api_socket);
    Ok(())
}

/// How often freed heap memory is handed back to the kernel.
const HEAP_TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// glibc keeps memory freed by the proxy's tasks in per-thread arenas: after
/// a burst of thousands of connections RSS would stay at the burst's peak
/// (and count against the pod's memory limit) although the live heap is a
/// few MiB. `malloc_trim` returns the free pages; cheap when there is
/// nothing to return.
/// Keeps `EGRET_NODE_ADDRS` equal to the agent netns's addresses (veths of
/// sandbox runtimes come and go), so guarded wildcard listeners stay
/// refused through every node address. Registration refreshes it too.
async fn watch_node_addrs(kernel: Arc<Kernel>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let k = kernel.clone();
        match tokio::task::spawn_blocking(move || k.maps.refresh_node_addrs()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("refreshing node addresses: {e}"),
            Err(e) => tracing::warn!("refreshing node addresses: {e}"),
        }
    }
}

async fn trim_heap(stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEAP_TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limit
/// in force. Every proxied connection holds two descriptors (sandbox and
/// provider legs); the usual default soft limit of 1024 would cap the agent
/// at a few hundred concurrent sandbox connections.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid pointer to an initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
        tracing::warn!(
            soft = lim.rlim_cur,
            hard = lim.rlim_max,
            "cannot raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
    lim.rlim_cur
}

/// The node CA (created on first run), the trust bundle sandboxes use, the
/// terminator minting leaves from it, and the upstream client roots.
fn tls_setup(cfg: &Config) -> Result<(Arc<Terminator>, Arc<UpstreamTls>), RunError> {
    let dir = ca_dir(cfg);
    let ca = Arc::new(Ca::init(&dir)?);
    tls::write_trust_bundle(&ca, &trust_bundle_path(cfg))?;
    if ca.was_created() {
        tracing::info!(cert = %ca.cert_path().display(), "node CA created");
    }
    let cache = Arc::new(LeafCache::new(ca, LeafCacheOptions::default()));
    let terminator = Arc::new(Terminator::new(cache)?);
    let upstream = Arc::new(UpstreamTls::new(&UpstreamTlsOptions {
        system_roots: true,
        extra_root_files: cfg.node.upstream_extra_roots.clone(),
    })?);
    Ok((terminator, upstream))
}

/// Where the node CA lives.
pub fn ca_dir(cfg: &Config) -> PathBuf {
    cfg.node.state_dir.join("ca")
}

/// Trust bundle (system roots + node CA) for sandboxes. It lives in the
/// state dir, not in the 0700 CA dir, so non-root sandboxes can read it.
pub fn trust_bundle_path(cfg: &Config) -> PathBuf {
    cfg.node.state_dir.join("trust-bundle.pem")
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

/// The gateway a record belongs to: set by the proxy for transactions,
/// derived from the attribution for flows.
fn stamp_gateway(l7: &L7, rec: &mut Record) {
    if rec.get(sc::GATEWAY_NAME).is_some() {
        return;
    }
    let attr = rec.invocation_id().map(|_| Attribution {
        invocation_id: String::new(),
        agent_kind: rec.get_str(sc::AGENT_KIND).unwrap_or("").to_owned(),
        agent_namespace: rec.get_str(sc::AGENT_NAMESPACE).unwrap_or("").to_owned(),
        agent_name: rec.get_str(sc::AGENT_NAME).unwrap_or("").to_owned(),
        ..Attribution::default()
    });
    if let Some(gw) = l7.policy.load().gateway_for(attr.as_ref()) {
        rec.set(sc::GATEWAY_NAME, gw.name.as_str());
    }
}

/// What the recorder hands records on to after the spool.
struct Recorder {
    /// Sets the record's gateway before it is spooled ([`stamp_gateway`]).
    stamp: Box<dyn Fn(&mut Record) + Send>,
    otlp: Arc<arc_swap::ArcSwap<OtlpSinks>>,
    tail: broadcast::Sender<Arc<Record>>,
    stats: Arc<RecordStats>,
}

/// The records of `batch` the spool kept (`kept`: ascending indices into
/// `batch`, from [`Spool::written_indices`]); the others are left out.
fn durable_only(batch: &mut Vec<Record>, kept: &[usize]) -> Vec<Record> {
    if kept.len() == batch.len() {
        return std::mem::take(batch);
    }
    let mut keep = kept.iter().copied().peekable();
    batch
        .drain(..)
        .enumerate()
        .filter_map(|(i, r)| {
            if keep.peek() == Some(&i) {
                keep.next();
                Some(r)
            } else {
                None
            }
        })
        .collect()
}

impl Recorder {
    /// After the records are durable: exporters and live viewers. Only
    /// records the spool kept may come here.
    fn fan_out(&self, batch: Vec<Record>) {
        let otlp = self.otlp.load();
        for rec in batch {
            if rec.kind() == sc::KIND_FLOW {
                self.stats.flows.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(gw) = rec.get_str(sc::GATEWAY_NAME) {
                otlp.offer(gw, &rec);
            }
            if self.tail.receiver_count() > 0 {
                let _ = self.tail.send(Arc::new(rec));
            }
        }
    }
}

/// Runs [`record_loop`] on its own thread (a current-thread runtime of its
/// own): appends block on write + fdatasync, and doing that on the proxy's
/// runtime (even with `block_in_place`) handed the worker to another thread
/// in the middle of a response — two thread wake-ups on every request's
/// path. The receiver resolves when the loop has written what was queued.
fn spawn_recorder(
    spool: Spool,
    rx: mpsc::Receiver<Record>,
    out: Recorder,
    stop: CancellationToken,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("egret-recorder".into())
        .spawn(move || {
            rt.block_on(record_loop(spool, rx, out, stop));
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

/// The only writer of the spool: batches what arrives, appends it (fsync'd),
/// and only then hands it to exporters and `egret tail`. On shutdown the
/// channel is closed and what is queued is still written. Runs on its own
/// thread ([`spawn_recorder`]), so the blocking append is fine here.
async fn record_loop(
    mut spool: Spool,
    mut rx: mpsc::Receiver<Record>,
    out: Recorder,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    // Since appends started failing: records lost, and when the last
    // append failed (None: appends succeed).
    let mut failing: Option<(u64, std::time::Instant)> = None;
    let mut last_append = std::time::Instant::now()
        .checked_sub(RECORD_LINGER)
        .unwrap_or_else(std::time::Instant::now);
    loop {
        batch.clear();
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, RECORD_BATCH) => n,
            _ = stop.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, RECORD_BATCH).await
            }
        };
        if n == 0 {
            return;
        }
        // Group commit: wait out the rest of the linger for more records
        // (unless the batch is full or shutdown began).
        let wait = RECORD_LINGER.saturating_sub(last_append.elapsed());
        if batch.len() < RECORD_BATCH && !wait.is_zero() && !stop.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
            while batch.len() < RECORD_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        last_append = std::time::Instant::now();
        for rec in batch.iter_mut() {
            // Off the queue: its place is free for its sandbox again.
            out.stats.queue.release(rec);
            (out.stamp)(rec);
        }
        // Only what the spool kept goes on: a record the spool refused or
        // failed to write is counted as dropped and reaches no exporter and
        // no viewer (nothing downstream may know a record the store lacks).
        let durable = match spool.append(&batch) {
            Ok(o) => {
                if o.dropped > 0 {
                    out.stats
                        .spool_dropped
                        .fetch_add(o.dropped as u64, Ordering::Relaxed);
                    tracing::warn!(dropped = o.dropped, "spool full: records dropped");
                }
                // On a nearly full disk small batches may still fit between
                // failing big ones: recovered only after a quiet spell.
                if let Some((lost, last)) = failing {
                    if last.elapsed() >= SPOOL_RECOVERY_QUIET {
                        failing = None;
                        tracing::warn!(
                            dropped = lost,
                            "spool writable again; records are being kept again"
                        );
                    }
                }
                durable_only(&mut batch, spool.written_indices(&o))
            }
            Err(e) => {
                out.stats
                    .spool_dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                // One line when it starts failing, one when it recovers: a
                // full disk under load must not flood the log.
                match failing.as_mut() {
                    Some((lost, last)) => {
                        *lost += batch.len() as u64;
                        *last = std::time::Instant::now();
                    }
                    None => {
                        failing = Some((batch.len() as u64, std::time::Instant::now()));
                        if e.is_disk_full() {
                            tracing::error!(
                                "spool disk full ({e}): records are dropped (counted in \
                                 egret_records_dropped_total{{stage=\"spool\"}}) until space \
                                 is freed; capture goes on"
                            );
                        } else {
                            tracing::error!(
                                "spool append failed ({e}): records are dropped until it \
                                 succeeds again; capture goes on"
                            );
                        }
                    }
                }
                Vec::new()
            }
        };
        out.fan_out(durable);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OtlpConfig, SignalsConfig, SpoolConfig};
    use crate::sink::otlp::{
        settings::resolve, ExportOptions, HttpClient, OtlpExporter, RetryPolicy,
    };

    /// A loopback OTLP/HTTP receiver answering 200 to everything.
    async fn receiver() -> (String, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            use http_body_util::BodyExt;
                            let _ = req.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        (url, task)
    }

    fn txn(i: usize) -> Record {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::GATEWAY_NAME, "gw");
        r.set(sc::INVOCATION_ID, format!("inv-{i}"));
        r.set(sc::REQUEST_BODY, "x".repeat(200));
        r
    }

    /// Runs the recorder over `n` records into `spool`; returns what the
    /// tail saw, the spans the OTLP receiver accepted and the counters.
    async fn record(spool: Spool, n: usize) -> (Vec<String>, u64, Arc<RecordStats>) {
        let (url, rx_task) = receiver().await;
        let cfg = OtlpConfig {
            endpoint: Some(url),
            signals: SignalsConfig {
                traces: true,
                logs: false,
                metrics: false,
            },
            ..OtlpConfig::default()
        };
        let opts = ExportOptions {
            flush_interval: Duration::from_millis(20),
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..ExportOptions::default()
        };
        let exp = OtlpExporter::start(
            resolve("gw", &cfg, &|_| None).unwrap().unwrap(),
            opts,
            HttpClient::new().unwrap(),
        )
        .unwrap();
        let mut sinks = OtlpSinks::default();
        sinks.add(exp.clone());
        let (tail, mut viewer) = broadcast::channel(TAIL_BUFFER);
        let stats = Arc::new(RecordStats::default());
        let (tx, rx) = mpsc::channel(RECORD_QUEUE);
        let stop = CancellationToken::new();
        let out = Recorder {
            stamp: Box::new(|_| {}),
            otlp: Arc::new(arc_swap::ArcSwap::from_pointee(sinks.clone())),
            tail,
            stats: stats.clone(),
        };
        let recorder = tokio::spawn(record_loop(spool, rx, out, stop.clone()));
        for i in 0..n {
            tx.send(txn(i)).await.unwrap();
        }
        drop(tx);
        recorder.await.unwrap();
        sinks.shutdown(Duration::from_secs(10)).await;
        rx_task.abort();
        let mut seen = Vec::new();
        while let Ok(r) = viewer.try_recv() {
            seen.push(r.invocation_id().unwrap().to_owned());
        }
        let st = exp.status();
        assert_eq!(st.signals[0].dropped, 0, "{st:?}");
        (seen, st.signals[0].sent, stats)
    }

    fn spooled(dir: &std::path::Path) -> Vec<String> {
        crate::store::read_records(dir)
            .unwrap()
            .map(|r| r.unwrap().invocation_id().unwrap().to_owned())
            .collect()
    }

    /// A spool full of unacknowledged data keeps part of a batch: only that
    /// part reaches OTLP and the tail; the rest is counted as dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_the_spool_refused_reach_neither_otlp_nor_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(&SpoolConfig {
            dir: tmp.path().to_owned(),
            max_bytes: 8 << 10,
            segment_bytes: 4 << 10,
        })
        .unwrap();
        // A sink that never acknowledges: nothing may be deleted.
        let _cursor = spool.cursor("held").unwrap();
        let n = 100;
        let (seen, sent, stats) = record(spool, n).await;
        let kept = spooled(tmp.path());
        assert!(!kept.is_empty() && kept.len() < n, "{}", kept.len());
        assert_eq!(seen, kept, "the tail saw exactly the spooled records");
        assert_eq!(
            sent,
            kept.len() as u64,
            "OTLP got exactly the spooled records"
        );
        assert_eq!(
            stats.spool_dropped.load(Ordering::Relaxed),
            (n - kept.len()) as u64
        );
        assert_eq!(
            stats.transactions.load(Ordering::Relaxed),
            kept.len() as u64,
            "records written counts only what was written"
        );
    }

    /// An append that fails (here: the next segment cannot be created)
    /// keeps nothing of its batch, and nothing of it goes downstream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_of_a_failed_append_reach_neither_otlp_nor_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let mut spool = Spool::open(&SpoolConfig {
            dir: dir.clone(),
            max_bytes: 1 << 20,
            segment_bytes: 1,
        })
        .unwrap();
        // Fill the first segment; then every append must start a new
        // segment, in a directory that is gone.
        spool.append(&[txn(999)]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let n = 20;
        let (seen, sent, stats) = record(spool, n).await;
        assert!(seen.is_empty(), "tail saw {seen:?}");
        assert_eq!(sent, 0, "OTLP got records the spool does not have");
        assert_eq!(stats.spool_dropped.load(Ordering::Relaxed), n as u64);
        assert_eq!(stats.transactions.load(Ordering::Relaxed), 0);
    }
}
