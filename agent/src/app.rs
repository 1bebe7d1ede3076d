//! `egret run`: builds every component in named steps, runs until
//! SIGTERM/SIGINT, and shuts down in order (after ztunnel's `app.rs`).
//!
//! ```text
//! prepare host → load kernel → open registry → start outputs (spool, ClickHouse, OTLP)
//!   → L7 + recorder → proxy listeners (+ trusted dialers) → close loop → API
//!   → background (kernel log, reload, heap trim, node addresses) → admin (ready)
//! wait for a signal → drain connections → flush flows → recorder → budgets → sinks
//! ```
//!
//! The recorder is the only writer of the spool; everything downstream
//! (ClickHouse, OTLP, `egret tail`) reads from the spool or from its tee.
use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{broadcast, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, Admin, Report},
    api,
    attribution::{Attribution, Registry},
    bpf::{self, Kernel, LoadOptions},
    budget::Budgets,
    cgroup::{self, NodePaths},
    config::Config,
    credentials::KeyHasher,
    flow,
    policy::Policy,
    proxy::{
        admission::Admission,
        trusted::{Trusted, TrustedError, TrustedOptions},
        Proxy, L7,
    },
    record::{Record, RecordStats},
    recorder::{self, Recorder},
    redact::{RedactionStats, Redactor},
    reload::{self, ReloadStatus},
    semconv as sc,
    sink::{
        self,
        clickhouse::ClickHouseReport,
        otlp::{metrics::PromMetrics, OtlpSinks},
        ClickHouseSink,
    },
    store::Spool,
    tls::{self, Ca, LeafCache, LeafCacheOptions, Terminator, UpstreamTls, UpstreamTlsOptions},
};

/// Mode of `node.stateDir`: only root lists it or opens what it holds,
/// except `trust-bundle.pem` (0644), which non-root sandboxes open by name
/// (`SSL_CERT_FILE`), hence the search bit for others. Everything private
/// in it is 0600 or in a 0700 directory (`ca/`, `spool/`).
pub const STATE_DIR_MODE: u32 = 0o711;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("egret run needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")]
    NotRoot,
    #[error(transparent)]
    Pricing(#[from] crate::cost::CostError),
    #[error("cgroup v2: {0}")]
    Cgroup(#[source] std::io::Error),
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
    #[error("{source}; this kernel lacks: {missing} (`egret doctor` lists every probe)")]
    KernelLacks {
        source: Box<bpf::BpfError>,
        missing: String,
    },
    #[error("redirect listener: {0}")]
    Listen(#[source] std::io::Error),
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
    #[error(transparent)]
    Redaction(#[from] crate::redact::RedactError),
    #[error("recorder thread: {0}")]
    Recorder(#[source] std::io::Error),
    #[error("admin listener: {0}")]
    Admin(#[source] std::io::Error),
}

/// Options of `egret run` beyond the config file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Every signal of every gateway is also sent here (dev tee).
    pub dev_otlp_fallback_endpoint: Option<String>,
    /// The config file, watched for hot reload (None: embedded default).
    pub config_path: Option<PathBuf>,
}

/// The host as `egret run` found it.
struct Host {
    paths: NodePaths,
    /// `paths.sandbox_root`, canonical.
    root_canon: PathBuf,
    root_level: u32,
    fd_limit: u64,
}

/// Root, file limits, the sandbox root (the agent must be outside it) and
/// the state dir.
fn prepare_host(cfg: &Config) -> Result<Host, RunError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RunError::NotRoot);
    }
    let fd_limit = raise_fd_limit();
    let paths = NodePaths::resolve(cfg.node.cgroup_mount.as_deref(), &cfg.node.sandbox_root)
        .map_err(RunError::Cgroup)?;
    std::fs::create_dir_all(&paths.sandbox_root).map_err(RunError::Cgroup)?;
    let root_rel = paths.sandbox_root_rel();
    let own = cgroup::of_pid(std::process::id()).map_err(RunError::Cgroup)?;
    if own == root_rel || own.starts_with(&format!("{root_rel}/")) {
        return Err(RunError::AgentInSandbox(root_rel));
    }
    crate::statefile::ensure_dir(&cfg.node.state_dir, STATE_DIR_MODE)?;
    let root_level = cgroup::level(&paths.cgroup_mount, &paths.sandbox_root);
    let root_canon = paths
        .sandbox_root
        .canonicalize()
        .map_err(RunError::Cgroup)?;
    Ok(Host {
        paths,
        root_canon,
        root_level,
        fd_limit,
    })
}

/// The kernel programs, attached at the sandbox root (or re-opened from
/// their pins).
/// The kernel half, loaded and attached. When the kernel refuses it, the
/// error names the features this kernel lacks (probed then), not only
/// the failing call.
fn load_kernel(cfg: &Config, host: &Host) -> Result<Arc<Kernel>, RunError> {
    let guarded = cfg.node.guarded_endpoints();
    let udp_ports = cfg.node.udp_ports();
    let loaded = Kernel::load(&LoadOptions {
        bpffs_dir: &cfg.node.bpffs_dir,
        sandbox_root: &host.paths.sandbox_root,
        root_level: host.root_level,
        listen_port: cfg.node.listen_port,
        capture_ports: &cfg.node.capture_ports,
        udp_ports: &udp_ports,
        udp_all_but_dns: cfg.node.block_all_udp_except_dns,
        block_raw: cfg.node.block_raw_sockets,
        max_sockets_per_sandbox: cfg.node.max_sockets_per_sandbox,
        max_pending_closes_per_sandbox: cfg.node.max_pending_closes_per_sandbox,
        guarded: &guarded,
    });
    match loaded {
        Ok(k) => Ok(Arc::new(k)),
        Err(source) => {
            let missing: Vec<String> = bpf::probe::features()
                .into_iter()
                .filter(|f| !matches!(f.supported, Ok(true)))
                .map(|f| f.name)
                .collect();
            if missing.is_empty() {
                Err(RunError::Bpf(source))
            } else {
                Err(RunError::KernelLacks {
                    source: Box::new(source),
                    missing: missing.join(", "),
                })
            }
        }
    }
}

/// The attribution registry, reconciled with what the pinned maps hold.
fn open_registry(cfg: &Config, host: &Host, kernel: &Kernel) -> Result<Arc<Registry>, RunError> {
    let registry = Arc::new(Registry::open(
        host.root_canon.clone(),
        cfg.node.state_dir.join("registry.json"),
    )?);
    registry.restore(&kernel.maps)?;
    Ok(registry)
}

/// Where records go: the spool (written by the recorder), the sinks
/// reading it, and the OTLP exporters the recorder tees to.
struct Outputs {
    spool: Spool,
    clickhouse: ClickHouseReport,
    sinks: Vec<JoinHandle<Result<(), sink::clickhouse::SinkError>>>,
    otlp: Arc<arc_swap::ArcSwap<OtlpSinks>>,
    /// The `redaction` rules the recorder applies (swapped on reload).
    redaction: Arc<arc_swap::ArcSwap<Redactor>>,
}

fn start_outputs(
    cfg: &Config,
    opts: &RunOptions,
    shutdown: &CancellationToken,
) -> Result<Outputs, RunError> {
    let state_dir = &cfg.node.state_dir;
    let spool = Spool::open(&cfg.store.spool_or_default(state_dir))?;
    let mut sinks = Vec::new();
    let mut clickhouse = ClickHouseReport(None);
    match &cfg.store.clickhouse {
        Some(ch) => {
            let cursor = spool.cursor(sink::clickhouse::CURSOR_NAME)?;
            let sink = ClickHouseSink::new(ch)?.with_dead_letter(sink::clickhouse::DeadLetter {
                path: state_dir.join(sink::clickhouse::DEAD_LETTER_FILE),
                max_bytes: sink::clickhouse::DEAD_LETTER_MAX_BYTES,
            });
            clickhouse = ClickHouseReport(Some(sink.status_handle()));
            sinks.push(tokio::spawn(sink.run(cursor, shutdown.child_token())));
        }
        None => {
            // A cursor left by an earlier config would pin data forever.
            spool
                .handle()
                .remove_cursor(sink::clickhouse::CURSOR_NAME)?;
        }
    }
    let otlp = sink::otlp::sinks_from_env(cfg, opts.dev_otlp_fallback_endpoint.as_deref())?;
    let redaction = Redactor::new(&cfg.redaction)?;
    Ok(Outputs {
        spool,
        clickhouse,
        sinks,
        otlp: Arc::new(arc_swap::ArcSwap::from_pointee(otlp)),
        redaction: Arc::new(arc_swap::ArcSwap::from_pointee(redaction)),
    })
}

/// The L7 path's shared state: policy, budgets, TLS, credentials hashing,
/// admission, and the sending end of the record queue.
fn build_l7(
    cfg: &Config,
    records: mpsc::Sender<Record>,
    record_stats: Arc<RecordStats>,
) -> Result<Arc<L7>, RunError> {
    let state_dir = &cfg.node.state_dir;
    let (terminator, upstream_tls) = tls_setup(cfg)?;
    let key_file = state_dir.join("apikey-id.secret");
    let keys = KeyHasher::open(&key_file).map_err(|source| RunError::StateDir {
        path: key_file.clone(),
        source,
    })?;
    Ok(Arc::new(L7 {
        policy: arc_swap::ArcSwap::from_pointee(Policy::new(cfg)),
        prices: arc_swap::ArcSwap::from_pointee(crate::cost::Prices::new(&cfg.pricing)?),
        budgets: Arc::new(Budgets::open(Some(state_dir.join("budgets.json")))),
        terminator,
        upstream_tls,
        keys: Arc::new(keys),
        records,
        record_stats,
        resolver: Default::default(),
        admission: Admission::new(cfg.node.limits.clone()),
        drain: Default::default(),
        mcp: crate::proxy::mcp_legacy::Registry::new(&cfg.node.mcp),
    }))
}

/// What [`start_proxy`] opened.
struct Listeners {
    proxy: Arc<Proxy>,
    trusted: Arc<Trusted>,
    trusted_tasks: Vec<JoinHandle<()>>,
}

/// The redirect listeners (the agent's netns, and every registered
/// sandbox netns still there) and the trusted-dialer listeners.
fn start_proxy(
    cfg: &Config,
    host: &Host,
    kernel: &Arc<Kernel>,
    registry: &Arc<Registry>,
    l7: &Arc<L7>,
) -> Result<Listeners, RunError> {
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
            cgroup_mount: host
                .paths
                .cgroup_mount
                .canonicalize()
                .map_err(RunError::Cgroup)?,
            sandbox_root: host.root_canon.clone(),
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
    Ok(Listeners {
        proxy,
        trusted,
        trusted_tasks,
    })
}

/// Everything `egret run` started, in the order it stops them.
struct App {
    cfg: Config,
    admin: Arc<Admin>,
    admin_task: JoinHandle<()>,
    api_task: JoinHandle<Result<(), api::ApiError>>,
    trusted: Arc<Trusted>,
    trusted_tasks: Vec<JoinHandle<()>>,
    l7: Arc<L7>,
    proxy: Arc<Proxy>,
    closes: JoinHandle<std::io::Result<()>>,
    closes_stop: CancellationToken,
    records: mpsc::Sender<Record>,
    recorder: oneshot::Receiver<()>,
    sinks: Vec<JoinHandle<Result<(), sink::clickhouse::SinkError>>>,
    otlp: Arc<arc_swap::ArcSwap<OtlpSinks>>,
    shutdown: CancellationToken,
}

impl App {
    async fn start(cfg: Config, opts: RunOptions) -> Result<App, RunError> {
        let host = prepare_host(&cfg)?;
        let kernel = load_kernel(&cfg, &host)?;
        let registry = open_registry(&cfg, &host, &kernel)?;
        let shutdown = CancellationToken::new();
        let outputs = start_outputs(&cfg, &opts, &shutdown)?;
        let spool_handle = outputs.spool.handle();

        let (tx, rx) = mpsc::channel::<Record>(recorder::QUEUE);
        let (tail, _) = broadcast::channel::<Arc<Record>>(recorder::TAIL_BUFFER);
        let record_stats = Arc::new(RecordStats::default());
        let metrics = Arc::new(PromMetrics::new(cfg.node.metrics.max_series));
        let redaction_stats = Arc::new(RedactionStats::default());
        let l7 = build_l7(&cfg, tx.clone(), record_stats.clone())?;
        tokio::spawn(crate::proxy::mcp_legacy::sweeper(
            l7.clone(),
            shutdown.child_token(),
        ));
        let recorder = recorder::spawn(
            outputs.spool,
            rx,
            Recorder {
                stamp: {
                    let l7 = l7.clone();
                    Box::new(move |rec: &mut Record| stamp_gateway(&l7, rec))
                },
                redaction: outputs.redaction.clone(),
                redaction_stats: redaction_stats.clone(),
                otlp: outputs.otlp.clone(),
                metrics: metrics.clone(),
                tail: tail.clone(),
                stats: record_stats.clone(),
            },
            shutdown.child_token(),
        )
        .map_err(RunError::Recorder)?;

        let Listeners {
            proxy,
            trusted,
            trusted_tasks,
        } = start_proxy(&cfg, &host, &kernel, &registry, &l7)?;
        let closes_stop = CancellationToken::new();
        let closes = tokio::spawn(flow::run_close_loop(
            kernel.clone(),
            registry.clone(),
            tx.clone(),
            record_stats.clone(),
            closes_stop.clone(),
        ));
        let api_task = start_api(
            &cfg,
            &host,
            &kernel,
            &registry,
            &proxy,
            RecordOutlets {
                records: tx.clone(),
                tail,
                stats: record_stats.clone(),
            },
        );

        let reload_status = Arc::new(ReloadStatus::default());
        reload_status.generation.store(1, Ordering::Relaxed);
        start_background(
            &cfg,
            &opts,
            &host,
            &kernel,
            &l7,
            &outputs.otlp,
            &outputs.redaction,
            &reload_status,
            &shutdown,
        );

        let reports: Vec<Arc<dyn Report>> = vec![
            kernel.clone(),
            Arc::new(flow::FlowReport),
            record_stats,
            l7.admission.clone(),
            proxy.clone(),
            trusted.clone(),
            registry,
            Arc::new(spool_handle),
            Arc::new(outputs.clickhouse),
            outputs.otlp.clone(),
            metrics,
            redaction_stats,
            reload_status,
        ];
        let admin = Admin::new(reports);
        let admin_task = admin::serve(cfg.node.admin_listen, admin.clone())
            .await
            .map_err(RunError::Admin)?;
        admin.set_ready(true);
        tracing::info!(
            sandbox_root = %host.paths.sandbox_root.display(),
            admin = %cfg.node.admin_listen,
            programs = ?kernel.attachment,
            api = %cfg.node.api_socket.display(),
            listen_port = cfg.node.listen_port,
            fd_limit = host.fd_limit,
            "egret running"
        );
        Ok(App {
            cfg,
            admin,
            admin_task,
            api_task,
            trusted,
            trusted_tasks,
            l7,
            proxy,
            closes,
            closes_stop,
            records: tx,
            recorder,
            sinks: outputs.sinks,
            otlp: outputs.otlp,
            shutdown,
        })
    }

    /// Until SIGTERM or SIGINT (or the API server fails).
    async fn wait(&mut self) -> Result<(), RunError> {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(RunError::Listen)?;
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            r = &mut self.api_task => {
                if let Ok(Err(e)) = r { return Err(e.into()); }
            }
        }
        Ok(())
    }

    /// Fail closed, drain, then flush every queued record and the sinks.
    async fn stop(self) {
        self.admin.set_ready(false);
        // Trusted dialers stop being accepted along with everything else.
        for t in self.trusted_tasks {
            t.abort();
        }
        self.trusted.cleanup();
        drop(self.trusted);
        let grace = self.cfg.node.drain_timeout;
        tracing::info!(?grace, "shutting down: draining connections");
        let drained = self.l7.drain.run(grace).await;
        if drained.forced > 0 {
            tracing::warn!(
                in_flight = drained.in_flight,
                closed = drained.forced,
                "drain bound reached: connections closed (their transactions are recorded with error.type=agent_shutdown)"
            );
        } else {
            tracing::info!(in_flight = drained.in_flight, "connections drained");
        }
        // MCP HTTP+SSE requests still awaiting their answer: written now
        // (`egret.mcp.answer = agent_shutdown`), never lost.
        for r in self.l7.mcp.drain() {
            self.l7.emit(r);
        }
        tracing::info!("shutting down: flushing records");
        // The close events the kernel has queued so far become flow records
        // now; later ones stay in the pinned ring buffer for the next start.
        self.closes_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.closes).await;
        drop(self.records);
        drop(self.proxy);
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.recorder).await;
        // Budget usage of the last transactions reaches the disk.
        let budgets = self.l7.budgets.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || budgets.flush()),
        )
        .await;
        for s in self.sinks {
            let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
        }
        self.otlp.load().shutdown(Duration::from_secs(5)).await;
        self.admin_task.abort();
        let _ = std::fs::remove_file(&self.cfg.node.api_socket);
    }
}

/// `egret run`.
pub async fn run(cfg: Config, opts: RunOptions) -> Result<(), RunError> {
    let mut app = App::start(cfg, opts).await?;
    app.wait().await?;
    app.stop().await;
    Ok(())
}

/// Where the attribution API's records go: the recorder's queue (invocation
/// records), live viewers, and the record counters.
struct RecordOutlets {
    records: mpsc::Sender<Record>,
    tail: broadcast::Sender<Arc<Record>>,
    stats: Arc<RecordStats>,
}

/// The attribution API on its unix socket.
fn start_api(
    cfg: &Config,
    host: &Host,
    kernel: &Arc<Kernel>,
    registry: &Arc<Registry>,
    proxy: &Arc<Proxy>,
    outlets: RecordOutlets,
) -> JoinHandle<Result<(), api::ApiError>> {
    let RecordOutlets {
        records,
        tail,
        stats: record_stats,
    } = outlets;
    let state = Arc::new(api::ApiState {
        registry: registry.clone(),
        records,
        kernel: kernel.clone(),
        proxy: proxy.clone(),
        sandbox_root_rel: host.paths.sandbox_root_rel(),
        tail,
        tail_lagged: record_stats,
    });
    let path = cfg.node.api_socket.clone();
    tokio::spawn(async move { api::serve(&path, state).await })
}

/// Tasks beside the data path: the kernel's log, config reload, heap trim,
/// the node-address watch.
#[allow(clippy::too_many_arguments)]
fn start_background(
    cfg: &Config,
    opts: &RunOptions,
    host: &Host,
    kernel: &Arc<Kernel>,
    l7: &Arc<L7>,
    otlp: &Arc<arc_swap::ArcSwap<OtlpSinks>>,
    redaction: &Arc<arc_swap::ArcSwap<Redactor>>,
    reload_status: &Arc<ReloadStatus>,
    shutdown: &CancellationToken,
) {
    if let Some(logger) = kernel
        .logger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        tokio::spawn(poll_kernel_log(logger));
    }
    if let Some(path) = opts.config_path.clone() {
        tokio::spawn(
            reload::Targets {
                path,
                running: cfg.clone(),
                l7: l7.clone(),
                kernel: kernel.clone(),
                root_level: host.root_level,
                otlp: otlp.clone(),
                redaction: redaction.clone(),
                dev_tee: opts.dev_otlp_fallback_endpoint.clone(),
                status: reload_status.clone(),
            }
            .run(),
        );
    }
    tokio::spawn(trim_heap(shutdown.child_token()));
    tokio::spawn(watch_node_addrs(kernel.clone(), shutdown.child_token()));
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
    let dir = cfg.node.ca_dir();
    let ca = Arc::new(Ca::init(&dir)?);
    tls::write_trust_bundle(&ca, &cfg.node.trust_bundle_path())?;
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
