//! The exporter: per-signal bounded queues and tasks, and the set of
//! exporters (one per gateway + the dev tee) the daemon offers records to.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use tokio_util::sync::CancellationToken;

use super::{
    encode::{self, EncodeContext, Item},
    metrics::{Aggregator, DEFAULT_MAX_SERIES},
    settings::{self, ExportSettings, Signal, SignalTarget, Temporality},
    transport::{encode_body, ExportRequest, HttpClient, LinkState, RetryPolicy, SignalStats},
    OtlpError,
};
use crate::{
    config::{Config, ContentMode},
    record::{now_unix_nanos, AttrValue, Record},
    semconv as sc,
};

/// Batching, retry and cardinality knobs (not in the config file; the
/// defaults suit production, tests shorten them). `OTEL_BSP_*` /
/// `OTEL_BLRP_*` override the batch size and flush interval per signal.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Records per request at most.
    pub max_batch: usize,
    /// Approximate encoded bytes per request at most (bodies dominate).
    pub max_batch_bytes: usize,
    /// A non-empty batch is sent at least this often.
    pub flush_interval: Duration,
    pub retry: RetryPolicy,
    /// Series per metric instrument before the overflow series.
    pub max_series: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            max_batch: 512,
            max_batch_bytes: 4 * 1024 * 1024,
            flush_interval: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            max_series: DEFAULT_MAX_SERIES,
        }
    }
}

/// One signal of an exporter, for the status endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalStatus {
    pub signal: Signal,
    /// Full URL the signal is posted to (headers are never shown).
    pub endpoint: String,
    /// `http/protobuf`, `http/json` or `grpc`.
    pub protocol: &'static str,
    pub state: LinkState,
    pub last_error: Option<String>,
    /// When the receiver last accepted an export (RFC 3339, UTC).
    pub last_success: Option<String>,
    /// Spans / log records / data points the receiver accepted.
    pub sent: u64,
    /// Records (or points) dropped: queue full, gave up, rejected.
    pub dropped: u64,
    /// Retried attempts.
    pub retries: u64,
    /// Records waiting in the queue now (traces, logs).
    pub queued: usize,
}

/// One exporter, for the status endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExporterStatus {
    /// `<gateway>` for a gateway's primary exporter, `<gateway>/<name>`
    /// for one of its `exporters[]`, or `dev-tee`.
    pub name: String,
    /// `error` when a signal's endpoint answered with an error, `connected`
    /// when every signal's last export was accepted, else `disconnected`
    /// (nothing exported yet, a transport failure, or no signal at all).
    pub state: LinkState,
    pub signals: Vec<SignalStatus>,
    /// Signals the environment switched off (`OTEL_SDK_DISABLED=true`,
    /// `OTEL_<SIGNAL>_EXPORTER=none`) although an endpoint is configured.
    pub switched_off: Vec<Signal>,
}

impl ExporterStatus {
    fn new(name: String, signals: Vec<SignalStatus>, switched_off: Vec<Signal>) -> Self {
        let state = if signals.iter().any(|s| s.state == LinkState::Error) {
            LinkState::Error
        } else if !signals.is_empty() && signals.iter().all(|s| s.state == LinkState::Connected) {
            LinkState::Connected
        } else {
            LinkState::Disconnected
        };
        ExporterStatus {
            name,
            state,
            signals,
            switched_off,
        }
    }
}

struct Pipe {
    tx: mpsc::Sender<Item>,
    stats: Arc<SignalStats>,
    protocol: &'static str,
    capacity: usize,
    /// Records accepted into the queue and not yet sent or dropped (queued,
    /// batched, or in a request): what shutdown gives up at its deadline.
    in_hand: Arc<AtomicU64>,
}

/// The metrics signal of an exporter: the aggregation the capture path
/// records into, and the stats of its export task.
struct MetricsPipe {
    agg: Arc<Mutex<Aggregator>>,
    stats: Arc<SignalStats>,
    protocol: &'static str,
}

struct Inner {
    name: String,
    /// `content`: what of a record's content this exporter may send.
    content: ContentMode,
    sampling: f64,
    tee: bool,
    traces: Option<Pipe>,
    logs: Option<Pipe>,
    metrics: Option<MetricsPipe>,
    switched_off: Vec<Signal>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Ships one gateway's records (or, as the dev tee, every gateway's) to an
/// OTLP/HTTP receiver. Cloning shares the exporter.
#[derive(Clone)]
pub struct OtlpExporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

fn endpoint_text(t: &SignalTarget) -> String {
    t.url.to_string()
}

/// `host.name` of this machine, when it has one.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer of the given length; the result is NUL-terminated
    // within it (we reserve the last byte).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..end])
        .ok()
        .map(str::to_owned)
        .filter(|h| !h.is_empty())
}

impl OtlpExporter {
    /// Starts the exporter's tasks on the current tokio runtime.
    pub fn start(
        settings: ExportSettings,
        opts: ExportOptions,
        client: HttpClient,
    ) -> Result<OtlpExporter, OtlpError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
        let opts = ExportOptions {
            max_batch: opts.max_batch.max(1),
            ..opts
        };
        let mut resource = settings.resource.clone();
        if !resource.contains_key(sc::HOST_NAME) {
            if let Some(h) = host_name() {
                resource.insert(sc::HOST_NAME.to_owned(), AttrValue::from(h));
            }
        }
        let ctx = Arc::new(EncodeContext {
            resource,
            conventions: settings.conventions,
        });
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let client_for = |target: &SignalTarget, signal: Signal| {
            client
                .for_tls(&target.tls)
                .map_err(|source| OtlpError::TlsSetup {
                    exporter: settings.name.clone(),
                    signal,
                    source,
                })
        };
        let mut pipe = |signal: Signal| -> Result<Option<Pipe>, OtlpError> {
            let Some(target) = settings.target(signal).cloned() else {
                return Ok(None);
            };
            let client = client_for(&target, signal)?;
            let protocol = target.protocol.as_str();
            let stats = Arc::new(SignalStats::new(signal, endpoint_text(&target)));
            let capacity = target.queue_capacity.max(1);
            let (tx, rx) = mpsc::channel(capacity);
            let in_hand = Arc::new(AtomicU64::new(0));
            let worker = Worker {
                in_hand: in_hand.clone(),
                signal,
                flush_interval: target.batch.schedule_delay.unwrap_or(opts.flush_interval),
                max_batch: target.batch.max_batch.unwrap_or(opts.max_batch).max(1),
                target,
                stats: stats.clone(),
                ctx: ctx.clone(),
                client,
                opts: opts.clone(),
            };
            tasks.push(rt.spawn(worker.run(rx, cancel.clone())));
            Ok(Some(Pipe {
                tx,
                stats,
                protocol,
                capacity,
                in_hand,
            }))
        };
        let traces = pipe(Signal::Traces)?;
        let logs = pipe(Signal::Logs)?;
        let metrics_client = match &settings.metrics {
            Some(t) => Some(client_for(t, Signal::Metrics)?),
            None => None,
        };
        let metrics = settings
            .metrics
            .clone()
            .zip(metrics_client)
            .map(|(target, client)| {
                let stats = Arc::new(SignalStats::new(Signal::Metrics, endpoint_text(&target)));
                let agg = Arc::new(Mutex::new(Aggregator::new(
                    u64::try_from(now_unix_nanos()).unwrap_or(0),
                    opts.max_series,
                )));
                (agg, stats, target, client)
            });
        let mut all_stats: Vec<Arc<SignalStats>> = Vec::new();
        all_stats.extend(traces.as_ref().map(|p| p.stats.clone()));
        all_stats.extend(logs.as_ref().map(|p| p.stats.clone()));
        let metrics = metrics.map(|(agg, stats, target, client)| {
            all_stats.push(stats.clone());
            let protocol = target.protocol.as_str();
            let task = MetricsTask {
                agg: agg.clone(),
                stats: stats.clone(),
                all_stats,
                target,
                ctx: ctx.clone(),
                client,
                retry: opts.retry,
                interval: settings.metrics_interval,
                budget: settings.metrics_timeout,
                delta: settings.temporality == Temporality::Delta,
            };
            tasks.push(rt.spawn(task.run(cancel.clone())));
            MetricsPipe {
                agg,
                stats,
                protocol,
            }
        });
        Ok(OtlpExporter {
            inner: Arc::new(Inner {
                name: settings.name.clone(),
                content: settings.conventions.content,
                sampling: settings.sampling,
                tee: settings.tee,
                traces,
                logs,
                metrics,
                switched_off: settings.switched_off.clone(),
                cancel,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Offers one record: counts it in the metrics, and queues it for
    /// traces and logs when sampled. Never blocks and never waits: a full
    /// queue drops the record and counts it.
    pub fn offer(&self, rec: &Record) {
        let mut shared = None;
        self.offer_shared(rec, None, &mut shared);
    }

    /// As [`offer`](Self::offer), for the dev tee: `gateway` names the
    /// gateway the record came through; `shared` is the record already
    /// cloned for another exporter (filled in when this one clones it).
    pub fn offer_shared(
        &self,
        rec: &Record,
        gateway: Option<&Arc<str>>,
        shared: &mut Option<Arc<Record>>,
    ) {
        let inner = &*self.inner;
        let gateway = if inner.tee { gateway } else { None };
        if let Some(MetricsPipe { agg, .. }) = &inner.metrics {
            agg.lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(rec, gateway.map(|g| &**g));
        }
        let want_span = inner.traces.is_some() && encode::has_span(rec);
        let want_log = inner.logs.is_some() && encode::has_log(rec);
        if !(want_span || want_log) || !encode::sampled(rec, inner.sampling) {
            return;
        }
        for (pipe, want) in [(&inner.traces, want_span), (&inner.logs, want_log)] {
            let Some(pipe) = pipe else { continue };
            if !want {
                continue;
            }
            // Reserve first so a full queue costs no clone.
            match pipe.tx.try_reserve() {
                Ok(permit) => {
                    // Before the send, so the worker never settles it first.
                    pipe.in_hand.fetch_add(1, Ordering::Relaxed);
                    let rec = shared.get_or_insert_with(|| Arc::new(rec.clone())).clone();
                    permit.send(Item {
                        gateway: gateway.cloned(),
                        rec,
                    });
                }
                Err(TrySendError::Full(())) | Err(TrySendError::Closed(())) => {
                    pipe.stats.add_dropped(1);
                }
            }
        }
    }

    pub fn status(&self) -> ExporterStatus {
        let inner = &*self.inner;
        let mut signals = Vec::new();
        for pipe in [&inner.traces, &inner.logs].into_iter().flatten() {
            signals.push(signal_status(
                &pipe.stats,
                pipe.protocol,
                pipe.capacity.saturating_sub(pipe.tx.capacity()),
            ));
        }
        if let Some(m) = &inner.metrics {
            signals.push(signal_status(&m.stats, m.protocol, 0));
        }
        ExporterStatus::new(inner.name.clone(), signals, inner.switched_off.clone())
    }

    /// Stops the exporter: queued records are flushed and metrics exported
    /// once more, for at most `deadline`; then the tasks are aborted and
    /// every record given up (queued, batched or in an unanswered request)
    /// is counted as dropped.
    pub async fn shutdown(&self, deadline: Duration) {
        self.inner.cancel.cancel();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_util::future::join_all(tasks);
        tokio::pin!(all);
        if tokio::time::timeout(deadline, all.as_mut()).await.is_err() {
            for a in aborts {
                a.abort();
            }
            // Aborted tasks end at their next await: after this nothing
            // settles records any more, so what is in hand is final.
            all.await;
            let inner = &*self.inner;
            let mut abandoned = 0;
            for pipe in [&inner.traces, &inner.logs].into_iter().flatten() {
                let n = pipe.in_hand.swap(0, Ordering::Relaxed);
                pipe.stats.add_dropped(n);
                abandoned += n;
            }
            tracing::warn!(
                exporter = %inner.name,
                abandoned,
                "otlp: shutdown deadline passed; aborted, records not sent counted as dropped"
            );
        }
    }
}

fn signal_status(stats: &SignalStats, protocol: &'static str, queued: usize) -> SignalStatus {
    SignalStatus {
        signal: stats.signal,
        endpoint: stats.endpoint.clone(),
        protocol,
        state: stats.state(),
        last_error: stats.last_error(),
        last_success: stats
            .last_success()
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        sent: stats.sent(),
        dropped: stats.dropped(),
        retries: stats.retries(),
        queued,
    }
}

/// Rough encoded size of a record (for batch byte bounds).
fn approx_size(rec: &Record) -> usize {
    rec.iter()
        .map(|(k, v)| {
            k.len()
                + 8
                + match v {
                    AttrValue::Str(s) => s.len(),
                    AttrValue::StrArray(a) => a.iter().map(|s| s.len() + 4).sum(),
                    _ => 8,
                }
        })
        .sum()
}

struct Worker {
    /// Shared with [`Pipe::in_hand`]: settled here once sent or dropped.
    in_hand: Arc<AtomicU64>,
    signal: Signal,
    target: SignalTarget,
    stats: Arc<SignalStats>,
    ctx: Arc<EncodeContext>,
    client: HttpClient,
    opts: ExportOptions,
    flush_interval: Duration,
    max_batch: usize,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Item>, cancel: CancellationToken) {
        let mut batch: Vec<Item> = Vec::new();
        let mut bytes = 0usize;
        let mut tick = tokio::time::interval(self.flush_interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    rx.close();
                    while let Ok(it) = rx.try_recv() {
                        bytes += approx_size(&it.rec);
                        batch.push(it);
                        if batch.len() >= self.max_batch || bytes >= self.opts.max_batch_bytes {
                            self.flush(&mut batch).await;
                            bytes = 0;
                        }
                    }
                    self.flush(&mut batch).await;
                    return;
                }
                it = rx.recv() => match it {
                    Some(it) => {
                        bytes += approx_size(&it.rec);
                        batch.push(it);
                        if batch.len() >= self.max_batch || bytes >= self.opts.max_batch_bytes {
                            self.flush(&mut batch).await;
                            bytes = 0;
                        }
                    }
                    None => {
                        self.flush(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.flush(&mut batch).await;
                        bytes = 0;
                    }
                }
            }
        }
    }

    async fn flush(&self, batch: &mut Vec<Item>) {
        if batch.is_empty() {
            return;
        }
        let now = u64::try_from(now_unix_nanos()).unwrap_or(0);
        let (req, n) = match self.signal {
            Signal::Traces => {
                let (req, n) = encode::traces_request(batch, &self.ctx, now);
                (ExportRequest::Traces(req), n)
            }
            Signal::Logs => {
                let (req, n) = encode::logs_request(batch, &self.ctx, now);
                (ExportRequest::Logs(req), n)
            }
            Signal::Metrics => (ExportRequest::Metrics(Default::default()), 0),
        };
        let records = batch.len() as u64;
        batch.clear();
        // Settled (sent, dropped, or nothing to send) only when done: an
        // abort at the shutdown deadline drops this future mid-export and
        // leaves them in hand, to be counted as dropped.
        let settle = |n: u64| self.in_hand.fetch_sub(n, Ordering::Relaxed);
        if n == 0 {
            settle(records);
            return;
        }
        let body = match encode_body(&req, &self.target) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(signal = %self.signal, error = %e, "otlp: encoding failed; batch dropped");
                self.stats.add_dropped(records);
                settle(records);
                return;
            }
        };
        drop(req);
        self.client
            .export(
                &self.target,
                body,
                n as u64,
                &self.opts.retry,
                &self.stats,
                self.target.batch.export_timeout,
            )
            .await;
        settle(records);
    }
}

struct MetricsTask {
    agg: Arc<Mutex<Aggregator>>,
    stats: Arc<SignalStats>,
    all_stats: Vec<Arc<SignalStats>>,
    target: SignalTarget,
    ctx: Arc<EncodeContext>,
    client: HttpClient,
    retry: RetryPolicy,
    interval: Duration,
    /// `OTEL_METRIC_EXPORT_TIMEOUT`: bound of one export, retries included.
    budget: Option<Duration>,
    /// Delta temporality: each export carries what was counted since the
    /// previous one (and resets the aggregation).
    delta: bool,
}

impl MetricsTask {
    async fn run(self, cancel: CancellationToken) {
        let interval = self.interval.max(settings::MIN_METRICS_INTERVAL);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.export().await;
                    return;
                }
                _ = tick.tick() => self.export().await,
            }
        }
    }

    async fn export(&self) {
        let now = u64::try_from(now_unix_nanos()).unwrap_or(0);
        let dropped: Vec<(Signal, u64)> = self
            .all_stats
            .iter()
            .map(|s| (s.signal, s.dropped()))
            .collect();
        let (req, n) = {
            let mut agg = self.agg.lock().unwrap_or_else(|e| e.into_inner());
            if self.delta {
                agg.take_delta(&self.ctx, now, &dropped)
            } else {
                agg.request(&self.ctx, now, &dropped)
            }
        };
        let body = match encode_body(&ExportRequest::Metrics(req), &self.target) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "otlp: encoding failed; metrics not sent");
                self.stats.add_dropped(n as u64);
                return;
            }
        };
        self.client
            .export(
                &self.target,
                body,
                n as u64,
                &self.retry,
                &self.stats,
                self.budget,
            )
            .await;
    }
}

/// Every exporter of the node: each gateway's (its primary `otlp` with an
/// effective endpoint, then its `exporters[]`), plus the optional dev tee
/// that receives every record.
#[derive(Debug, Default, Clone)]
pub struct OtlpSinks {
    gateways: BTreeMap<String, (Arc<str>, Vec<OtlpExporter>)>,
    tee: Option<OtlpExporter>,
}

impl OtlpSinks {
    /// Resolves every gateway's exporter sections against `env` and starts
    /// the exporters that have somewhere to send (on the current runtime).
    /// `dev_tee` is a base URL receiving every signal of every gateway.
    /// Returns the sinks and warnings to log (ignored malformed env entries).
    pub fn from_config(
        cfg: &Config,
        dev_tee: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        opts: ExportOptions,
    ) -> Result<(OtlpSinks, Vec<String>), OtlpError> {
        let mut resolved = Vec::new();
        let mut warnings = Vec::new();
        for g in &cfg.gateways {
            for (_, section) in g.otlp_exporters() {
                if let Some(s) = settings::resolve(&g.name, section, env)? {
                    warnings.extend(s.warnings.iter().map(|w| format!("{}: {w}", s.name)));
                    resolved.push((g.name.clone(), s));
                }
            }
        }
        let tee = match dev_tee {
            Some(url) => Some(settings::dev_tee(url, &[], env)?),
            None => None,
        };
        if resolved.is_empty() && tee.is_none() {
            return Ok((OtlpSinks::default(), warnings));
        }
        let client = HttpClient::new().map_err(OtlpError::Tls)?;
        let mut sinks = OtlpSinks::default();
        for g in &cfg.gateways {
            sinks.add_gateway_name(&g.name);
        }
        for (gateway, s) in resolved {
            sinks.add(
                &gateway,
                OtlpExporter::start(s, opts.clone(), client.clone())?,
            );
        }
        if let Some(t) = tee {
            sinks.set_tee(OtlpExporter::start(t, opts, client)?);
        }
        Ok((sinks, warnings))
    }

    /// Adds an exporter to `gateway` (replacing one of the same name).
    pub fn add(&mut self, gateway: &str, exporter: OtlpExporter) {
        self.add_gateway_name(gateway);
        if let Some((_, list)) = self.gateways.get_mut(gateway) {
            list.retain(|e| e.name() != exporter.name());
            list.push(exporter);
        }
    }

    /// Registers a gateway without an exporter, so the dev tee can name it
    /// without allocating per record.
    pub fn add_gateway_name(&mut self, name: &str) {
        self.gateways
            .entry(name.to_owned())
            .or_insert_with(|| (Arc::from(name), Vec::new()));
    }

    /// Sets the dev tee (an exporter started from [`settings::dev_tee`]).
    pub fn set_tee(&mut self, exporter: OtlpExporter) {
        self.tee = Some(exporter);
    }

    pub fn is_empty(&self) -> bool {
        self.exporters().next().is_none()
    }

    fn exporters(&self) -> impl Iterator<Item = &OtlpExporter> {
        self.gateways
            .values()
            .flat_map(|(_, e)| e.iter())
            .chain(self.tee.iter())
    }

    /// The exporters of `gateway`, primary first.
    pub fn gateway(&self, gateway: &str) -> &[OtlpExporter] {
        self.gateways
            .get(gateway)
            .map(|(_, e)| e.as_slice())
            .unwrap_or_default()
    }

    /// Whether any exporter sends spans or logs carrying `key` (a content
    /// attribute) under its content mode: when none does (and the spool
    /// does not keep it either), the recorder need not collect it.
    pub fn any_sends(&self, key: &str) -> bool {
        self.exporters().any(|e| {
            let i = &*e.inner;
            (i.traces.is_some() || i.logs.is_some()) && i.content.keeps(key)
        })
    }

    /// Offers a record of `gateway` to each of that gateway's exporters and
    /// to the dev tee. Non-blocking; the record is cloned at most once.
    pub fn offer(&self, gateway: &str, rec: &Record) {
        let mut shared = None;
        let name = match self.gateways.get(gateway) {
            Some((name, exporters)) => {
                for exp in exporters {
                    exp.offer_shared(rec, None, &mut shared);
                }
                Some(name.clone())
            }
            None => None,
        };
        if let Some(tee) = &self.tee {
            let name = name.unwrap_or_else(|| Arc::from(gateway));
            tee.offer_shared(rec, Some(&name), &mut shared);
        }
    }

    pub fn status(&self) -> Vec<ExporterStatus> {
        self.exporters().map(OtlpExporter::status).collect()
    }

    /// Flushes and stops every exporter within `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        let all = self.exporters().map(|e| e.shutdown(deadline));
        futures_util::future::join_all(all).await;
    }
}

/// The OTLP exporters' admin report; the set in force changes on reload.
impl crate::admin::Report for arc_swap::ArcSwap<OtlpSinks> {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        let mut sent = Vec::new();
        let mut dropped = Vec::new();
        let mut up = Vec::new();
        for e in self.load().status() {
            for sig in e.signals {
                let labels = vec![
                    ("exporter", e.name.clone()),
                    ("signal", format!("{:?}", sig.signal).to_lowercase()),
                ];
                sent.push((labels.clone(), sig.sent));
                dropped.push((labels.clone(), sig.dropped));
                up.push((
                    labels,
                    i64::from(matches!(sig.state, crate::sink::otlp::LinkState::Connected)),
                ));
            }
        }
        m.counter("egret_otlp_sent", "Items an OTLP receiver accepted", &sent)?;
        m.counter(
            "egret_otlp_dropped",
            "Items dropped by an OTLP exporter (queue full, gave up)",
            &dropped,
        )?;
        m.gauge(
            "egret_otlp_up",
            "1 when the exporter's last export succeeded",
            &up,
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        s.insert("otlp".into(), serde_json::json!(self.load().status()));
    }
}
