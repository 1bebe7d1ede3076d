//! The admin listener: `/metrics` (OpenMetrics text), `/healthz`, `/readyz`,
//! `/status` (JSON state of every stage and sink).
//!
//! The admin module knows no component: each component implements
//! [`Report`] next to its own counters, and the wiring (`app`) registers
//! them. A report writes its metric families (through [`Metrics`]) and its
//! members of `/status` (through [`Status`]).
//!
//! It binds `node.adminListen` in the agent's own network namespace only;
//! sandbox netns never get it, the kernel refuses sandbox connects to it by
//! every address form, and redirected sandbox connections only ever reach
//! the redirect listener.
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
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry as PromRegistry,
};

/// Label pairs of one series.
pub type Labels<'a> = Vec<(&'a str, String)>;

/// Label pairs of one series, names owned (built at scrape time).
pub type OwnedLabels = Vec<(String, String)>;

/// One series of a histogram family.
#[derive(Debug)]
pub struct HistogramSeries<'a> {
    pub labels: OwnedLabels,
    /// Upper bounds of the buckets but the last (which is `+Inf`).
    pub bounds: &'a [f64],
    /// Count per bucket (not cumulative): `bounds.len() + 1` of them.
    pub buckets: &'a [u64],
    pub count: u64,
    pub sum: f64,
}

/// What a component reports on the admin endpoints.
pub trait Report: Send + Sync {
    /// Writes this component's metric families.
    fn metrics(&self, m: &mut Metrics<'_, '_>) -> std::fmt::Result;
    /// Adds this component's members to `/status`.
    fn status(&self, s: &mut Status);
}

/// The members of the `/status` document.
pub type Status = serde_json::Map<String, serde_json::Value>;

/// Writes metric families: one call per family, every series at once.
pub struct Metrics<'e, 'a> {
    enc: &'e mut DescriptorEncoder<'a>,
}

impl Metrics<'_, '_> {
    /// A counter family (`_total` is appended by the encoder).
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        series: &[(Labels<'_>, u64)],
    ) -> std::fmt::Result {
        let c = ConstCounter::new(0u64);
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, c.metric_type())?;
        if let [(labels, v)] = series {
            if labels.is_empty() {
                return ConstCounter::new(*v).encode(m);
            }
        }
        for (labels, v) in series {
            ConstCounter::new(*v).encode(m.encode_family(&owned(labels))?)?;
        }
        Ok(())
    }

    /// A gauge family.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        series: &[(Labels<'_>, i64)],
    ) -> std::fmt::Result {
        let g = ConstGauge::new(0i64);
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, g.metric_type())?;
        if let [(labels, v)] = series {
            if labels.is_empty() {
                return ConstGauge::new(*v).encode(m);
            }
        }
        for (labels, v) in series {
            ConstGauge::new(*v).encode(m.encode_family(&owned(labels))?)?;
        }
        Ok(())
    }
}

impl Metrics<'_, '_> {
    /// A counter family whose label names are built at scrape time.
    pub fn counter_owned<N: EncodeCounterValue + Copy + std::fmt::Debug>(
        &mut self,
        name: &str,
        help: &str,
        series: &[(OwnedLabels, N)],
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in series {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    /// A histogram family (`_bucket` with `le`, `_sum`, `_count`).
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        series: &[HistogramSeries<'_>],
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for s in series {
            // The encoder writes `f64::MAX` as `+Inf`.
            let buckets: Vec<(f64, u64)> = s
                .bounds
                .iter()
                .copied()
                .chain(std::iter::once(f64::MAX))
                .zip(s.buckets.iter().copied())
                .collect();
            m.encode_family(&s.labels)?
                .encode_histogram::<NoLabelSet>(s.sum, s.count, &buckets, None)?;
        }
        Ok(())
    }
}

fn owned(labels: &Labels<'_>) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A `u64` as a gauge value (saturating).
pub fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What the admin endpoints serve: the registered reports and readiness.
pub struct Admin {
    reports: Vec<Arc<dyn Report>>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("reports", &self.reports.len())
            .field("ready", &self.ready)
            .finish()
    }
}

impl Admin {
    pub fn new(reports: Vec<Arc<dyn Report>>) -> Arc<Admin> {
        Arc::new(Admin {
            reports,
            ready: AtomicBool::new(false),
        })
    }

    /// `/readyz` answers 200 while set.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The `/metrics` text (OpenMetrics).
    pub fn metrics_text(self: &Arc<Self>) -> Result<String, std::fmt::Error> {
        let mut prom = PromRegistry::default();
        prom.register_collector(Box::new(Collect(self.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &prom)?;
        Ok(out)
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        let mut s = Status::new();
        s.insert("ready".into(), self.ready.load(Ordering::Relaxed).into());
        for r in &self.reports {
            r.status(&mut s);
        }
        serde_json::Value::Object(s)
    }
}

#[derive(Debug)]
struct Collect(Arc<Admin>);

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = Metrics { enc: &mut enc };
        for r in &self.0.reports {
            r.metrics(&mut m)?;
        }
        Ok(())
    }
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

fn route(req: &Request<Incoming>, admin: &Admin, prom: &PromRegistry) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if admin.ready.load(Ordering::Relaxed) {
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
            serde_json::to_string_pretty(&admin.status()).unwrap_or_default(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Binds the admin listener; returns the task serving it.
pub async fn serve(
    addr: SocketAddr,
    admin: Arc<Admin>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut prom = PromRegistry::default();
    prom.register_collector(Box::new(Collect(admin.clone())));
    let prom = Arc::new(prom);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = admin.clone();
            let prom = prom.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let r = route(&req, &admin, &prom);
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}
