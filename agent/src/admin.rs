//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/status` (JSON state of every stage and sink).
//!
//! It binds `node.adminListen` in the agent's own network namespace only;
//! sandbox netns never get it, and redirected sandbox connections only ever
//! reach the redirect listener.
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry as PromRegistry,
};
use serde_json::json;

use crate::{
    attribution::Registry,
    bpf::Kernel,
    proxy::{Proxy, L7},
    record::RecordStats,
    sink::{clickhouse::StatusHandle, otlp::OtlpSinks},
    store::SpoolHandle,
};

/// Everything the admin endpoints report on.
pub struct AdminState {
    pub kernel: Arc<Kernel>,
    pub registry: Arc<Registry>,
    pub proxy: Arc<Proxy>,
    pub l7: Arc<L7>,
    pub spool: SpoolHandle,
    pub clickhouse: Option<StatusHandle>,
    pub otlp: Arc<arc_swap::ArcSwap<OtlpSinks>>,
    pub records: Arc<RecordStats>,
    pub reload: Arc<crate::reload::ReloadStatus>,
    /// The trusted-dialer (PROXY protocol) listeners.
    pub trusted: Arc<crate::proxy::trusted::Trusted>,
    pub ready: AtomicBool,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminState")
    }
}

#[derive(Debug)]
struct Metrics(Arc<AdminState>);

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(0u64);
    let mut m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    if let [(labels, v)] = series {
        if labels.is_empty() {
            return ConstCounter::new(*v).encode(m);
        }
    }
    for (labels, v) in series {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, String)>, i64)],
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(0i64);
    let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    if let [(labels, v)] = series {
        if labels.is_empty() {
            return ConstGauge::new(*v).encode(m);
        }
    }
    for (labels, v) in series {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        ConstGauge::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let kernel: Vec<(Vec<(&str, String)>, u64)> = s
            .kernel
            .maps
            .stats()
            .into_iter()
            .map(|(name, v)| (vec![("event", name.to_owned())], v))
            .collect();
        counter(
            &mut enc,
            "egret_kernel_events",
            "Kernel-side events: redirects, refusals, drops and misses (EGRET_STATS)",
            &kernel,
        )?;
        counter(
            &mut enc,
            "egret_flow_counters_missing",
            "Flow records written without the kernel's wire counters (egret.l4.counters_missing)",
            &[(
                vec![],
                crate::flow::COUNTERS_MISSING.load(Ordering::Relaxed),
            )],
        )?;
        counter(
            &mut enc,
            "egret_records_over_sandbox_share",
            "Records dropped because their sandbox had its share of the record queue queued",
            &[(vec![], s.records.queue.dropped.load(Ordering::Relaxed))],
        )?;
        let a = &s.l7.admission.refusals;
        counter(
            &mut enc,
            "egret_sandbox_limit_refusals",
            "Connections closed and requests refused (429) because a sandbox was at its limit",
            &[
                (
                    vec![("limit", "connections".into())],
                    a.connections.load(Ordering::Relaxed),
                ),
                (
                    vec![("limit", "requests".into())],
                    a.requests.load(Ordering::Relaxed),
                ),
            ],
        )?;
        counter(
            &mut enc,
            "egret_request_bodies_streamed_over_budget",
            "Request bodies streamed instead of buffered whole: the sandbox's or the node's buffer budget was used up",
            &[(vec![], a.buffer_spills.load(Ordering::Relaxed))],
        )?;
        let (sandboxes, buffered) = s.l7.admission.usage();
        gauge(
            &mut enc,
            "egret_request_bytes_buffered",
            "Request body bytes held whole by the proxy right now",
            &[(vec![], buffered as i64)],
        )?;
        gauge(
            &mut enc,
            "egret_sandboxes_with_connections",
            "Sandboxes with at least one connection through the proxy",
            &[(vec![], sandboxes as i64)],
        )?;
        let (tags, links, counters) = s.kernel.maps.occupancy();
        gauge(
            &mut enc,
            "egret_kernel_map_entries",
            "Entries in the per-socket kernel maps (back to baseline when sockets are gone)",
            &[
                (vec![("map", "tags".into())], tags as i64),
                (vec![("map", "links".into())], links as i64),
                (vec![("map", "counters".into())], counters as i64),
            ],
        )?;
        let r = &s.records;
        counter(
            &mut enc,
            "egret_records",
            "Records written to the spool, by kind",
            &[
                (
                    vec![("kind", "flow".into())],
                    r.flows.load(Ordering::Relaxed),
                ),
                (
                    vec![("kind", "transaction".into())],
                    r.transactions.load(Ordering::Relaxed),
                ),
            ],
        )?;
        counter(
            &mut enc,
            "egret_records_dropped",
            "Records lost before the spool, by stage (queue full, flow record not queued, spool full or failing)",
            &[
                (
                    vec![("stage", "queue".into())],
                    s.l7.dropped_records.load(Ordering::Relaxed),
                ),
                (
                    vec![("stage", "flow".into())],
                    r.flow_dropped.load(Ordering::Relaxed),
                ),
                (
                    vec![("stage", "spool".into())],
                    r.spool_dropped.load(Ordering::Relaxed),
                ),
            ],
        )?;
        let sp = s.spool.stats();
        gauge(
            &mut enc,
            "egret_spool_bytes",
            "Bytes on disk in the spool",
            &[(vec![], n(sp.bytes_on_disk))],
        )?;
        counter(
            &mut enc,
            "egret_spool_io_errors",
            "Spool write errors (e.g. disk full)",
            &[(vec![], sp.io_errors)],
        )?;
        let lags: Vec<(Vec<(&str, String)>, i64)> = sp
            .cursors
            .iter()
            .map(|c| (vec![("cursor", c.name.clone())], n(c.lag_bytes)))
            .collect();
        gauge(
            &mut enc,
            "egret_spool_cursor_lag_bytes",
            "Bytes a sink still has to deliver",
            &lags,
        )?;
        let p = &s.proxy.stats;
        counter(
            &mut enc,
            "egret_proxy_connections",
            "Connections the redirect listener handled, by result",
            &[
                (
                    vec![("result", "accepted".into())],
                    p.accepted.load(Ordering::Relaxed),
                ),
                (
                    vec![("result", "refused_unlinked".into())],
                    p.refused_unlinked.load(Ordering::Relaxed),
                ),
                (
                    vec![("result", "upstream_error".into())],
                    p.upstream_errors.load(Ordering::Relaxed),
                ),
            ],
        )?;
        let pp: Vec<(Vec<(&str, String)>, u64)> = s
            .trusted
            .stats
            .outcomes()
            .into_iter()
            .map(|(outcome, v)| (vec![("result", outcome.to_owned())], v))
            .collect();
        counter(
            &mut enc,
            "egret_proxy_protocol_connections",
            "Connections the trusted-dialer (PROXY protocol) listeners handled, by result",
            &pp,
        )?;
        gauge(
            &mut enc,
            "egret_sandboxes",
            "Registered sandboxes",
            &[(vec![], s.registry.list().len() as i64)],
        )?;
        if let Some(ch) = &s.clickhouse {
            let st = ch.get();
            counter(
                &mut enc,
                "egret_clickhouse_rows_inserted",
                "Rows ClickHouse acknowledged",
                &[(vec![], st.rows_inserted)],
            )?;
            counter(
                &mut enc,
                "egret_clickhouse_retries",
                "Failed ClickHouse inserts retried",
                &[(vec![], st.retries)],
            )?;
            counter(
                &mut enc,
                "egret_clickhouse_dead_letter",
                "Records ClickHouse rejected on their own, set aside in the dead-letter file and skipped",
                &[(vec![], st.dead_lettered)],
            )?;
            counter(
                &mut enc,
                "egret_clickhouse_dead_letter_overflow",
                "Rejected records not written to the dead-letter file (full or failing): lost",
                &[(vec![], st.dead_letter_overflow)],
            )?;
            let up = matches!(st.state, crate::sink::clickhouse::SinkState::Connected);
            gauge(
                &mut enc,
                "egret_clickhouse_up",
                "1 when the last ClickHouse insert or check succeeded",
                &[(vec![], i64::from(up))],
            )?;
        }
        let mut sent = Vec::new();
        let mut dropped = Vec::new();
        let mut up = Vec::new();
        for e in s.otlp.load().status() {
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
        counter(
            &mut enc,
            "egret_otlp_sent",
            "Items an OTLP receiver accepted",
            &sent,
        )?;
        counter(
            &mut enc,
            "egret_otlp_dropped",
            "Items dropped by an OTLP exporter (queue full, gave up)",
            &dropped,
        )?;
        gauge(
            &mut enc,
            "egret_otlp_up",
            "1 when the exporter's last export succeeded",
            &up,
        )?;
        counter(
            &mut enc,
            "egret_config_reloads",
            "Config reloads, by result (rejected: the old config stayed in force)",
            &[
                (
                    vec![("result", "applied".into())],
                    s.reload.applied.load(Ordering::Relaxed),
                ),
                (
                    vec![("result", "rejected".into())],
                    s.reload.rejected.load(Ordering::Relaxed),
                ),
            ],
        )?;
        counter(
            &mut enc,
            "egret_tail_lagged",
            "Records a slow `egret tail` client skipped",
            &[(vec![], r.tail_lagged.load(Ordering::Relaxed))],
        )?;
        Ok(())
    }
}

fn status_json(s: &AdminState) -> serde_json::Value {
    let p = &s.proxy.stats;
    json!({
        "ready": s.ready.load(Ordering::Relaxed),
        "programs": format!("{:?}", s.kernel.attachment),
        "kernel": s.kernel.maps.stats().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        // Per-sandbox shares of the socket maps (cgroup id → sockets held,
        // connects refused over the quota), most refused first.
        // Invocations that lost records to their share of the record queue.
        "records_over_share": s.records.queue.dropped_by.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "sandbox_sockets": s.kernel.maps.sandbox_shares(100).into_iter().map(|(cg, sh)| json!({
            "cgroup_id": cg.to_string(),
            "sockets": sh.sockets,
            "refused": sh.refused,
            "closes_dropped": sh.closes_dropped,
        })).collect::<Vec<_>>(),
        "sandboxes": s.registry.list().len(),
        "proxy": {
            "accepted": p.accepted.load(Ordering::Relaxed),
            "refused_unlinked": p.refused_unlinked.load(Ordering::Relaxed),
            "upstream_errors": p.upstream_errors.load(Ordering::Relaxed),
            // Sandboxes using each open listener pair (the agent's own: 1).
            "listener_holders": s.proxy.listener_holders(),
        },
        "proxy_protocol": s
            .trusted
            .stats
            .outcomes()
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
        "records": {
            "flows": s.records.flows.load(Ordering::Relaxed),
            "transactions": s.records.transactions.load(Ordering::Relaxed),
            "dropped_queue": s.l7.dropped_records.load(Ordering::Relaxed),
            "dropped_flow": s.records.flow_dropped.load(Ordering::Relaxed),
            "dropped_spool": s.records.spool_dropped.load(Ordering::Relaxed),
        },
        "spool": s.spool.stats(),
        "clickhouse": s.clickhouse.as_ref().map(StatusHandle::get),
        "otlp": s.otlp.load().status(),
        "config": {
            "generation": s.reload.generation.load(Ordering::Relaxed),
            "reloads_applied": s.reload.applied.load(Ordering::Relaxed),
            "reloads_rejected": s.reload.rejected.load(Ordering::Relaxed),
            "last_reload_error": s.reload.last_error(),
        },
    })
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn route(
    req: &Request<Incoming>,
    state: &Arc<AdminState>,
    prom: &PromRegistry,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "starting\n".into(),
                )
            }
        }
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, prom) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/status" => text(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&status_json(state)).unwrap_or_default(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Binds the admin listener; returns the task serving it.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut prom = PromRegistry::default();
    prom.register_collector(Box::new(Metrics(state.clone())));
    let prom = Arc::new(prom);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            let prom = prom.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let r = route(&req, &state, &prom);
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}
