//! The recorder: the only writer of the spool.
//!
//! ```text
//! kernel (close events) ─┐
//!                        ├─► records channel (bounded, per-sandbox shares) ─► recorder
//! proxy (transactions) ──┘      group commit (≤ 5 ms linger) → spool append (fsync'd)
//!                               → then `/metrics`, OTLP exporters and `egret tail`
//! ```
//!
//! Before the append each record is stamped (its gateway) and redacted
//! (`redact`, the `redaction` rules): what a rule cuts out is in no batch
//! that leaves here. The spool writes through its content mode
//! (`store.spool.content`); the in-memory record goes on to the OTLP
//! exporters (each with its own content mode) as redacted, and to `egret
//! tail` through the spool's content mode, so the tail shows no more than
//! `egret records` can.
//!
//! Only what the spool kept goes on: everything downstream (ClickHouse,
//! OTLP, viewers) knows only durable records. It runs on its own thread
//! ([`spawn`]) so the blocking append never lands on the proxy's runtime.
mod invocation_io;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use invocation_io::InvocationIo;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    config::ContentMode,
    record::{Record, RecordStats},
    redact::{RedactionStats, Redactor},
    semconv as sc,
    sink::otlp::{metrics::PromMetrics, OtlpSinks},
    store::Spool,
};

/// Capacity of the channel from capture to the recorder.
pub const QUEUE: usize = 65_536;
/// Most records appended (and fsync'd) at once.
const BATCH: usize = 4_096;
/// Least time between two spool appends: records arriving meanwhile join
/// the next batch, so a busy proxy pays one write + fdatasync per batch,
/// not per record (group commit). Records reach exporters at most this
/// much later.
const LINGER: Duration = Duration::from_millis(5);
/// Records buffered for `egret tail` viewers; slower viewers skip ahead.
pub const TAIL_BUFFER: usize = 4_096;
/// After spool appends failed, how long they must keep succeeding before
/// the spool is reported writable again (one log line per episode).
const SPOOL_RECOVERY_QUIET: Duration = Duration::from_secs(5);

/// What the recorder hands records on to after the spool.
pub struct Recorder {
    /// Sets what the record needs before it is spooled (its gateway).
    pub stamp: Box<dyn Fn(&mut Record) + Send>,
    /// The `redaction` rules in force (swapped on reload).
    pub redaction: Arc<arc_swap::ArcSwap<Redactor>>,
    pub redaction_stats: Arc<RedactionStats>,
    pub otlp: Arc<arc_swap::ArcSwap<OtlpSinks>>,
    /// The admin `/metrics` aggregation.
    pub metrics: Arc<PromMetrics>,
    pub tail: broadcast::Sender<Arc<Record>>,
    pub stats: Arc<RecordStats>,
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
    fn fan_out(&self, batch: Vec<Record>, spool_content: ContentMode) {
        self.metrics.record_all(&batch);
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
                let mut rec = rec;
                if spool_content != ContentMode::Full {
                    rec.retain(|k| spool_content.keeps(k));
                }
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
pub fn spawn(
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
/// thread ([`spawn`]), so the blocking append is fine here.
async fn record_loop(
    mut spool: Spool,
    mut rx: mpsc::Receiver<Record>,
    out: Recorder,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut io = InvocationIo::default();
    // Since appends started failing: records lost, and when the last
    // append failed (None: appends succeed).
    let mut failing: Option<(u64, std::time::Instant)> = None;
    let mut last_append = std::time::Instant::now()
        .checked_sub(LINGER)
        .unwrap_or_else(std::time::Instant::now);
    loop {
        batch.clear();
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            _ = stop.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, BATCH).await
            }
        };
        if n == 0 {
            return;
        }
        // Group commit: wait out the rest of the linger for more records
        // (unless the batch is full or shutdown began).
        let wait = LINGER.saturating_sub(last_append.elapsed());
        if batch.len() < BATCH && !wait.is_zero() && !stop.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        }
        last_append = std::time::Instant::now();
        let redactor = out.redaction.load();
        // The invocations' input/output (bodies) only when something
        // downstream keeps bodies: the spool (and so ClickHouse and the
        // tail) or an exporter.
        let io_wanted =
            spool.content().keeps(sc::REQUEST_BODY) || out.otlp.load().any_sends(sc::REQUEST_BODY);
        if !io_wanted {
            io.clear();
        }
        for rec in batch.iter_mut() {
            // Off the queue: its place is free for its sandbox again.
            out.stats.queue.release(rec);
            (out.stamp)(rec);
            // Before the append: nothing downstream sees what it cuts.
            redactor.apply(rec, &out.redaction_stats);
            if io_wanted {
                io.observe(rec);
            }
        }
        out.stats
            .invocation_io_untracked
            .store(io.untracked(), Ordering::Relaxed);
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
        out.fan_out(durable, spool.content());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OtlpConfig, SignalsConfig, SpoolConfig};
    use crate::redact::{RedactionStats, Redactor};
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
        sinks.add("gw", exp.clone());
        let (tail, mut viewer) = broadcast::channel(TAIL_BUFFER);
        let stats = Arc::new(RecordStats::default());
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let out = Recorder {
            stamp: Box::new(|_| {}),
            redaction: Arc::default(),
            redaction_stats: Arc::default(),
            otlp: Arc::new(arc_swap::ArcSwap::from_pointee(sinks.clone())),
            metrics: Arc::new(PromMetrics::new(100)),
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
            ..SpoolConfig::default()
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

    /// The redaction rules run before the append: the spool's bytes on
    /// disk and the tail hold the replacement, never the secret; the
    /// spool's content mode decides what it writes and what the tail shows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redaction_happens_before_the_spool_and_its_content_mode_bounds_the_tail() {
        const SECRET: &str = "AKIAIOSFODNN7EXAMPLE";
        for content in [ContentMode::Full, ContentMode::Metadata] {
            let tmp = tempfile::tempdir().unwrap();
            let spool = Spool::open(&SpoolConfig {
                dir: tmp.path().to_owned(),
                content,
                ..SpoolConfig::default()
            })
            .unwrap();
            let cfg: crate::config::RedactionConfig =
                serde_norway::from_str("builtins: [aws_access_key_id]").unwrap();
            let (tail, mut viewer) = broadcast::channel(TAIL_BUFFER);
            let stats = Arc::new(RedactionStats::default());
            let (tx, rx) = mpsc::channel(QUEUE);
            let out = Recorder {
                stamp: Box::new(|_| {}),
                redaction: Arc::new(arc_swap::ArcSwap::from_pointee(
                    Redactor::new(&cfg).unwrap(),
                )),
                redaction_stats: stats.clone(),
                otlp: Arc::default(),
                metrics: Arc::new(PromMetrics::new(100)),
                tail,
                stats: Arc::new(RecordStats::default()),
            };
            let recorder = tokio::spawn(record_loop(spool, rx, out, CancellationToken::new()));
            let mut rec = txn(0);
            rec.set(sc::REQUEST_BODY, format!("{{\"k\":\"{SECRET}\"}}"));
            rec.set(sc::URL_PATH, "/v1/messages");
            tx.send(rec).await.unwrap();
            drop(tx);
            recorder.await.unwrap();
            let mut on_disk = Vec::new();
            for e in std::fs::read_dir(tmp.path()).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    on_disk.extend(std::fs::read(p).unwrap());
                }
            }
            let on_disk = String::from_utf8_lossy(&on_disk);
            assert!(!on_disk.contains(SECRET), "{content:?}: {on_disk}");
            assert!(on_disk.contains("/v1/messages"), "{content:?}: {on_disk}");
            let seen = viewer.try_recv().unwrap();
            let spooled: Vec<Record> = crate::store::read_records(tmp.path())
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(spooled.len(), 1);
            assert_eq!(*seen, spooled[0], "the tail shows what the spool kept");
            assert_eq!(seen.get_i64(sc::REDACTION_COUNT), Some(1));
            match content {
                ContentMode::Full => {
                    assert_eq!(
                        seen.get_str(sc::REQUEST_BODY),
                        Some("{\"k\":\"[REDACTED:aws_access_key_id]\"}")
                    );
                    assert!(on_disk.contains("[REDACTED:aws_access_key_id]"));
                }
                _ => {
                    assert_eq!(seen.get(sc::REQUEST_BODY), None);
                    assert!(!on_disk.contains("REDACTED"), "{on_disk}");
                }
            }
            assert_eq!(stats.by_rule()["aws_access_key_id"], 1);
        }
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
            ..SpoolConfig::default()
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
