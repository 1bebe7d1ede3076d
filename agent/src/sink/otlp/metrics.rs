//! In-memory cumulative metrics with bounded cardinality.
//!
//! [`Aggregator::record`] runs on the capture path (under a short mutex):
//! it looks a series up by a hash of borrowed attribute values and
//! allocates only when it creates a series, which happens at most
//! `max_series` times per instrument. Past the cap, points go to one
//! `otel.metric.overflow=true` series, as the OpenTelemetry SDKs do.
//!
//! The same aggregation serves the admin `/metrics` endpoint
//! ([`PromMetrics`], fed by the recorder with every durable record) and
//! each OTLP exporter (fed as records are offered to it).
use std::{
    collections::{hash_map::Entry, HashMap},
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher},
    sync::Mutex,
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{any_value, AnyValue, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Histogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
};

use super::{encode, settings::Signal};
use crate::{
    admin,
    record::{AttrValue, ChunkGaps, Record, CHUNK_SECONDS_BOUNDS},
    semconv as sc,
};

/// `gen_ai.client.token.usage` buckets (GenAI semconv v1.41.1).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// `gen_ai.client.operation.duration` buckets in seconds (GenAI semconv v1.41.1).
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Series per instrument before points go to the overflow series
/// (`node.metrics.maxSeries`).
pub const DEFAULT_MAX_SERIES: usize = crate::config::DEFAULT_MAX_SERIES;

const MAX_ATTRS: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq)]
enum ARef<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq)]
enum AOwned {
    Str(String),
    Bool(bool),
    Int(i64),
}

impl AOwned {
    fn matches(&self, r: &ARef<'_>) -> bool {
        match (self, r) {
            (AOwned::Str(a), ARef::Str(b)) => a == b,
            (AOwned::Bool(a), ARef::Bool(b)) => a == b,
            (AOwned::Int(a), ARef::Int(b)) => a == b,
            _ => false,
        }
    }
    /// The value as a Prometheus label value.
    fn label(&self) -> String {
        match self {
            AOwned::Str(s) => s.clone(),
            AOwned::Bool(b) => b.to_string(),
            AOwned::Int(i) => i.to_string(),
        }
    }
    fn to_any(&self) -> AnyValue {
        AnyValue {
            value: Some(match self {
                AOwned::Str(s) => any_value::Value::StringValue(s.clone()),
                AOwned::Bool(b) => any_value::Value::BoolValue(*b),
                AOwned::Int(i) => any_value::Value::IntValue(*i),
            }),
        }
    }
}

/// The series keys' hasher: foldhash (word at a time; FNV-1a's byte at a
/// time was most of a point's cost, SipHash's more), seeded at random once
/// per process, so the values a sandbox controls (model names) cannot be
/// chosen to collide. Collisions cost accuracy only (a set colliding with
/// another's goes to the overflow series, never into the other).
static SERIES_HASH: std::sync::LazyLock<foldhash::quality::RandomState> =
    std::sync::LazyLock::new(foldhash::quality::RandomState::default);

/// The hasher of a map keyed by a hash: the key is used as is.
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A fixed-capacity attribute set borrowed from a record (no allocation).
#[derive(Clone, Copy)]
struct Attrs<'a> {
    items: [Option<(&'static str, ARef<'a>)>; MAX_ATTRS],
    len: usize,
}

impl<'a> Attrs<'a> {
    fn new() -> Self {
        Attrs {
            items: [None; MAX_ATTRS],
            len: 0,
        }
    }
    fn push(&mut self, key: &'static str, v: ARef<'a>) {
        if self.len < MAX_ATTRS {
            self.items[self.len] = Some((key, v));
            self.len += 1;
        }
    }
    fn push_str(&mut self, key: &'static str, v: Option<&'a str>) {
        if let Some(s) = v.filter(|s| !s.is_empty()) {
            self.push(key, ARef::Str(s));
        }
    }
    fn iter(&self) -> impl Iterator<Item = &(&'static str, ARef<'a>)> {
        self.items[..self.len].iter().flatten()
    }
    fn key(&self) -> u64 {
        let mut h = SERIES_HASH.build_hasher();
        for (k, v) in self.iter() {
            k.hash(&mut h);
            match v {
                ARef::Str(s) => {
                    0u8.hash(&mut h);
                    s.hash(&mut h);
                }
                ARef::Bool(b) => {
                    1u8.hash(&mut h);
                    b.hash(&mut h);
                }
                ARef::Int(i) => {
                    2u8.hash(&mut h);
                    i.hash(&mut h);
                }
            }
        }
        h.finish()
    }
    fn owned_attrs(&self) -> Vec<(&'static str, AOwned)> {
        self.iter()
            .map(|(k, v)| {
                (
                    *k,
                    match v {
                        ARef::Str(s) => AOwned::Str((*s).to_owned()),
                        ARef::Bool(b) => AOwned::Bool(*b),
                        ARef::Int(i) => AOwned::Int(*i),
                    },
                )
            })
            .collect()
    }
    fn same_as(&self, owned: &[(&'static str, AOwned)]) -> bool {
        owned.len() == self.len
            && self
                .iter()
                .zip(owned)
                .all(|((k, v), (ok, ov))| k == ok && ov.matches(v))
    }
}

#[derive(Debug, Clone)]
enum Point {
    Sum(i64),
    /// A sum of fractional values (cost in USD).
    FSum(f64),
    Hist {
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
        buckets: Vec<u64>,
    },
}

impl Point {
    fn new(bounds: Option<&[f64]>, float: bool) -> Point {
        match bounds {
            None if float => Point::FSum(0.0),
            None => Point::Sum(0),
            Some(b) => Point::Hist {
                count: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                buckets: vec![0; b.len() + 1],
            },
        }
    }
    fn add(&mut self, bounds: Option<&[f64]>, v: f64) {
        match self {
            Point::Sum(s) => *s = s.saturating_add(v as i64),
            Point::FSum(s) => *s += v,
            Point::Hist {
                count,
                sum,
                min,
                max,
                buckets,
            } => {
                let b = bounds.unwrap_or(&[]);
                // Bucket i holds (b[i-1], b[i]]; the last one (b[n-1], +inf).
                let i = b.partition_point(|x| *x < v);
                if let Some(slot) = buckets.get_mut(i) {
                    *slot += 1;
                }
                *count += 1;
                *sum += v;
                *min = min.min(v);
                *max = max.max(v);
            }
        }
    }
}

impl Point {
    /// Adds a whole histogram over the same bounds (a stream's chunk gaps).
    fn merge(&mut self, gaps: &ChunkGaps) {
        let Point::Hist {
            count,
            sum,
            min,
            max,
            buckets,
        } = self
        else {
            return;
        };
        if gaps.count == 0 || buckets.len() != gaps.buckets.len() {
            return;
        }
        for (b, g) in buckets.iter_mut().zip(gaps.buckets) {
            *b += g;
        }
        *count += gaps.count;
        *sum += gaps.sum;
        *min = min.min(gaps.min);
        *max = max.max(gaps.max);
    }
}

struct Series {
    attrs: Vec<(&'static str, AOwned)>,
    point: Point,
}

struct Instrument {
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    bounds: Option<&'static [f64]>,
    /// A counter of fractional values (else integer).
    float: bool,
    /// By [`Attrs::key`], already a hash: not hashed again.
    series: HashMap<u64, Series, BuildHasherDefault<KeyIsHash>>,
    overflow: Option<Point>,
}

impl Instrument {
    fn new(
        name: &'static str,
        description: &'static str,
        unit: &'static str,
        bounds: Option<&'static [f64]>,
    ) -> Self {
        Instrument {
            name,
            description,
            unit,
            bounds,
            float: false,
            series: HashMap::default(),
            overflow: None,
        }
    }

    /// A counter of fractional values.
    fn float(mut self) -> Self {
        self.float = true;
        self
    }

    /// The point of `attrs`' series: created while there is room, else
    /// the overflow series (also for a hash collision between different
    /// sets, which are never merged).
    fn point(&mut self, attrs: &Attrs<'_>, max_series: usize) -> &mut Point {
        let (bounds, float) = (self.bounds, self.float);
        let room = self.series.len() < max_series;
        match self.series.entry(attrs.key()) {
            Entry::Occupied(e) if attrs.same_as(&e.get().attrs) => &mut e.into_mut().point,
            Entry::Vacant(e) if room => {
                &mut e
                    .insert(Series {
                        attrs: attrs.owned_attrs(),
                        point: Point::new(bounds, float),
                    })
                    .point
            }
            _ => self
                .overflow
                .get_or_insert_with(|| Point::new(bounds, float)),
        }
    }

    fn add(&mut self, attrs: &Attrs<'_>, v: f64, max_series: usize) {
        let bounds = self.bounds;
        self.point(attrs, max_series).add(bounds, v);
    }

    fn merge(&mut self, attrs: &Attrs<'_>, gaps: &ChunkGaps, max_series: usize) {
        self.point(attrs, max_series).merge(gaps);
    }

    /// The Prometheus name (OpenTelemetry's Prometheus compatibility
    /// rules): dots become underscores, seconds and bytes get their unit
    /// suffix; the encoder adds `_total` to counters.
    fn prometheus_name(&self) -> String {
        let mut n = self.name.replace('.', "_");
        match self.unit {
            "s" if !n.ends_with("_seconds") => n.push_str("_seconds"),
            "By" if !n.contains("bytes") => n.push_str("_bytes"),
            _ => {}
        }
        n
    }

    fn write_prometheus(&self, m: &mut admin::Metrics<'_, '_>) -> std::fmt::Result {
        let labels = |attrs: &[(&'static str, AOwned)]| -> admin::OwnedLabels {
            attrs
                .iter()
                .map(|(k, v)| (prometheus_label(k), v.label()))
                .collect()
        };
        let overflow = || {
            vec![(
                prometheus_label(sc::OTEL_METRIC_OVERFLOW),
                "true".to_owned(),
            )]
        };
        let mut points: Vec<(admin::OwnedLabels, &Point)> = self
            .series
            .values()
            .map(|s| (labels(&s.attrs), &s.point))
            .collect();
        // A stable order, so scrapes diff cleanly.
        points.sort_by(|a, b| a.0.cmp(&b.0));
        points.extend(self.overflow.as_ref().map(|p| (overflow(), p)));
        let name = self.prometheus_name();
        match self.bounds {
            None => {
                if self.float {
                    let series: Vec<(admin::OwnedLabels, f64)> = points
                        .into_iter()
                        .map(|(l, p)| match p {
                            Point::FSum(s) => (l, *s),
                            _ => (l, 0.0),
                        })
                        .collect();
                    return m.counter_owned(&name, self.description, &series);
                }
                let series: Vec<(admin::OwnedLabels, u64)> = points
                    .into_iter()
                    .map(|(l, p)| {
                        let v = match p {
                            Point::Sum(s) => u64::try_from(*s).unwrap_or(0),
                            Point::FSum(s) => *s as u64,
                            Point::Hist { count, .. } => *count,
                        };
                        (l, v)
                    })
                    .collect();
                m.counter_owned(&name, self.description, &series)
            }
            Some(bounds) => {
                let series: Vec<admin::HistogramSeries<'_>> = points
                    .into_iter()
                    .filter_map(|(labels, p)| match p {
                        Point::Hist {
                            count,
                            sum,
                            buckets,
                            ..
                        } => Some(admin::HistogramSeries {
                            labels,
                            bounds,
                            buckets,
                            count: *count,
                            sum: *sum,
                        }),
                        Point::Sum(_) | Point::FSum(_) => None,
                    })
                    .collect();
                m.histogram(&name, self.description, &series)
            }
        }
    }

    fn to_metric(&self, start_ns: u64, now_ns: u64, temporality: i32) -> Option<Metric> {
        if self.series.is_empty() && self.overflow.is_none() {
            return None;
        }
        let mut points: Vec<(Vec<KeyValue>, &Point)> = self
            .series
            .values()
            .map(|s| {
                (
                    s.attrs
                        .iter()
                        .map(|(k, v)| encode::kv(k, v.to_any()))
                        .collect(),
                    &s.point,
                )
            })
            .collect();
        if let Some(o) = &self.overflow {
            points.push((
                vec![encode::kv(
                    sc::OTEL_METRIC_OVERFLOW,
                    AnyValue {
                        value: Some(any_value::Value::BoolValue(true)),
                    },
                )],
                o,
            ));
        }
        let data = match self.bounds {
            None => Data::Sum(Sum {
                data_points: points
                    .into_iter()
                    .map(|(attributes, p)| number_point(attributes, p, start_ns, now_ns))
                    .collect(),
                aggregation_temporality: temporality,
                is_monotonic: true,
            }),
            Some(bounds) => Data::Histogram(Histogram {
                data_points: points
                    .into_iter()
                    .filter_map(|(attributes, p)| match p {
                        Point::Hist {
                            count,
                            sum,
                            min,
                            max,
                            buckets,
                        } => Some(HistogramDataPoint {
                            attributes,
                            start_time_unix_nano: start_ns,
                            time_unix_nano: now_ns,
                            count: *count,
                            sum: Some(*sum),
                            bucket_counts: buckets.clone(),
                            explicit_bounds: bounds.to_vec(),
                            min: (*count > 0).then_some(*min),
                            max: (*count > 0).then_some(*max),
                            ..Default::default()
                        }),
                        Point::Sum(_) | Point::FSum(_) => None,
                    })
                    .collect(),
                aggregation_temporality: temporality,
            }),
        };
        Some(Metric {
            name: self.name.to_owned(),
            description: self.description.to_owned(),
            unit: self.unit.to_owned(),
            data: Some(data),
            ..Default::default()
        })
    }
}

fn number_point(attributes: Vec<KeyValue>, p: &Point, start: u64, now: u64) -> NumberDataPoint {
    let v = match p {
        Point::Sum(s) => number_data_point::Value::AsInt(*s),
        Point::FSum(s) => number_data_point::Value::AsDouble(*s),
        Point::Hist { count, .. } => {
            number_data_point::Value::AsInt(i64::try_from(*count).unwrap_or(i64::MAX))
        }
    };
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(v),
        ..Default::default()
    }
}

/// The metrics of one exporter.
pub struct Aggregator {
    start_ns: u64,
    max_series: usize,
    token_usage: Instrument,
    duration: Instrument,
    transactions: Instrument,
    flows: Instrument,
    l4_bytes: Instrument,
    requests: Instrument,
    request_duration: Instrument,
    request_tokens: Instrument,
    request_cost: Instrument,
    time_to_first_chunk: Instrument,
    time_per_output_chunk: Instrument,
    /// Drop totals at the previous delta export.
    dropped_before: Vec<(Signal, u64)>,
}

fn status_class(code: Option<i64>) -> &'static str {
    match code {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

fn duration_seconds(rec: &Record) -> Option<f64> {
    let ms = match rec.get(sc::DURATION_MS) {
        Some(AttrValue::Float(f)) if f.is_finite() && *f >= 0.0 => Some(*f),
        Some(AttrValue::Int(i)) if *i >= 0 => Some(*i as f64),
        _ => None,
    };
    if let Some(ms) = ms {
        return Some(ms / 1000.0);
    }
    let (s, e) = (rec.get_i64(sc::START_TIME)?, rec.get_i64(sc::END_TIME)?);
    (e >= s).then(|| (e - s) as f64 / 1e9)
}

impl Aggregator {
    pub fn new(start_ns: u64, max_series: usize) -> Aggregator {
        Aggregator {
            start_ns,
            max_series: max_series.max(1),
            token_usage: Instrument::new(
                sc::METRIC_GEN_AI_TOKEN_USAGE,
                "Number of input and output tokens used",
                "{token}",
                Some(TOKEN_BUCKETS),
            ),
            duration: Instrument::new(
                sc::METRIC_GEN_AI_OPERATION_DURATION,
                "GenAI operation duration",
                "s",
                Some(DURATION_BUCKETS),
            ),
            transactions: Instrument::new(
                sc::METRIC_TRANSACTIONS,
                "HTTP exchanges captured by the egress proxy",
                "{transaction}",
                None,
            ),
            flows: Instrument::new(
                sc::METRIC_FLOWS,
                "TCP connections from sandboxes",
                "{flow}",
                None,
            ),
            l4_bytes: Instrument::new(
                sc::METRIC_L4_BYTES,
                "Payload bytes sandboxes sent and received",
                "By",
                None,
            ),
            requests: Instrument::new(
                sc::METRIC_REQUESTS,
                "Transactions (HTTP exchanges through the proxy, refused ones included)",
                "{request}",
                None,
            ),
            request_duration: Instrument::new(
                sc::METRIC_REQUEST_DURATION,
                "Transaction duration, request start to response end",
                "s",
                Some(DURATION_BUCKETS),
            ),
            request_tokens: Instrument::new(
                sc::METRIC_REQUEST_TOKENS,
                "Tokens the provider reported, by gen_ai.token.type",
                "{token}",
                None,
            ),
            request_cost: Instrument::new(
                sc::METRIC_REQUEST_COST,
                "Cost of the transactions egret could price (egret.cost.usd)",
                "USD",
                None,
            )
            .float(),
            time_to_first_chunk: Instrument::new(
                sc::METRIC_GEN_AI_TIME_TO_FIRST_CHUNK,
                "Time to receive the first chunk of a streamed response",
                "s",
                Some(&CHUNK_SECONDS_BOUNDS),
            ),
            time_per_output_chunk: Instrument::new(
                sc::METRIC_GEN_AI_TIME_PER_OUTPUT_CHUNK,
                "Time between consecutive chunks of a streamed response",
                "s",
                Some(&CHUNK_SECONDS_BOUNDS),
            ),
            dropped_before: Vec::new(),
        }
    }

    /// Counts one record (before sampling). `gateway` is set for the dev tee,
    /// which splits every series by `egret.gateway.name`.
    pub fn record(&mut self, rec: &Record, gateway: Option<&str>) {
        let max = self.max_series;
        let mut base = Attrs::new();
        base.push_str(sc::GATEWAY_NAME, gateway);
        match rec.kind() {
            sc::KIND_TRANSACTION => {
                self.record_request(rec, gateway);
                let status = rec.get_i64(sc::HTTP_RESPONSE_STATUS_CODE);
                let mut t = base;
                t.push(sc::HTTP_STATUS_CLASS, ARef::Str(status_class(status)));
                t.push_str(
                    sc::GEN_AI_PROVIDER_NAME,
                    rec.get_str(sc::GEN_AI_PROVIDER_NAME),
                );
                self.transactions.add(&t, 1.0, max);

                let mut g = base;
                g.push_str(
                    sc::GEN_AI_PROVIDER_NAME,
                    rec.get_str(sc::GEN_AI_PROVIDER_NAME),
                );
                g.push_str(
                    sc::GEN_AI_OPERATION_NAME,
                    rec.get_str(sc::GEN_AI_OPERATION_NAME),
                );
                g.push_str(
                    sc::GEN_AI_REQUEST_MODEL,
                    rec.get_str(sc::GEN_AI_REQUEST_MODEL),
                );
                g.push_str(
                    sc::GEN_AI_RESPONSE_MODEL,
                    rec.get_str(sc::GEN_AI_RESPONSE_MODEL),
                );
                // `server.port` is conditionally required with `server.address`.
                if let Some(addr) = rec.get_str(sc::SERVER_ADDRESS).filter(|a| !a.is_empty()) {
                    g.push(sc::SERVER_ADDRESS, ARef::Str(addr));
                    if let Some(port) = rec.get_i64(sc::SERVER_PORT) {
                        g.push(sc::SERVER_PORT, ARef::Int(port));
                    }
                }
                let is_genai = rec.get_str(sc::GEN_AI_OPERATION_NAME).is_some()
                    || rec.get_str(sc::GEN_AI_PROVIDER_NAME).is_some();
                if is_genai {
                    if let Some(secs) = duration_seconds(rec) {
                        let mut code_buf = [0u8; 24];
                        let mut d: Attrs<'_> = g;
                        let err = rec.get_str(sc::ERROR_TYPE).filter(|s| !s.is_empty());
                        match (err, status) {
                            (Some(e), _) => d.push(sc::ERROR_TYPE, ARef::Str(e)),
                            (None, Some(c)) if c >= 400 => {
                                d.push(sc::ERROR_TYPE, ARef::Str(status_text(c, &mut code_buf)));
                            }
                            _ => {}
                        }
                        self.duration.add(&d, secs, max);
                    }
                    // Streaming (semantic-conventions-genai v0.1.0): only
                    // for responses the request asked to stream.
                    if rec.get_bool(sc::GEN_AI_REQUEST_STREAM) == Some(true) {
                        if let Some(AttrValue::Float(t)) =
                            rec.get(sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK)
                        {
                            if t.is_finite() && *t >= 0.0 {
                                self.time_to_first_chunk.add(&g, *t, max);
                            }
                        }
                        if let Some(gaps) = rec.chunk_gaps() {
                            self.time_per_output_chunk.merge(&g, gaps, max);
                        }
                    }
                }
                for (key, ty) in [
                    (sc::GEN_AI_USAGE_INPUT_TOKENS, "input"),
                    (sc::GEN_AI_USAGE_OUTPUT_TOKENS, "output"),
                ] {
                    if let Some(n) = rec.get_i64(key).filter(|n| *n >= 0) {
                        let mut u = g;
                        u.push(sc::GEN_AI_TOKEN_TYPE, ARef::Str(ty));
                        self.token_usage.add(&u, n as f64, max);
                    }
                }
            }
            sc::KIND_FLOW => {
                let mut f = base;
                if let Some(r) = rec.get_bool(sc::L4_REDIRECTED) {
                    f.push(sc::L4_REDIRECTED, ARef::Bool(r));
                }
                self.flows.add(&f, 1.0, max);
                for (key, dir) in [
                    (sc::L4_BYTES_SANDBOX_TX, "transmit"),
                    (sc::L4_BYTES_SANDBOX_RX, "receive"),
                ] {
                    if let Some(n) = rec.get_i64(key).filter(|n| *n > 0) {
                        let mut b = base;
                        b.push(sc::NETWORK_IO_DIRECTION, ARef::Str(dir));
                        self.l4_bytes.add(&b, n as f64, max);
                    }
                }
            }
            _ => {}
        }
    }

    fn instruments(&self) -> [&Instrument; 11] {
        [
            &self.token_usage,
            &self.duration,
            &self.time_to_first_chunk,
            &self.time_per_output_chunk,
            &self.requests,
            &self.request_duration,
            &self.request_tokens,
            &self.request_cost,
            &self.transactions,
            &self.flows,
            &self.l4_bytes,
        ]
    }

    fn instruments_mut(&mut self) -> [&mut Instrument; 11] {
        [
            &mut self.token_usage,
            &mut self.duration,
            &mut self.time_to_first_chunk,
            &mut self.time_per_output_chunk,
            &mut self.requests,
            &mut self.request_duration,
            &mut self.request_tokens,
            &mut self.request_cost,
            &mut self.transactions,
            &mut self.flows,
            &mut self.l4_bytes,
        ]
    }

    /// The request metrics of a transaction: every transaction counts, by
    /// gateway, route, provider, model, status code, `error.type`, policy
    /// and budget outcome and agent namespace. A key the record lacks is
    /// left out of the set (never a made-up value).
    fn record_request(&mut self, rec: &Record, gateway: Option<&str>) {
        let max = self.max_series;
        let mut a = Attrs::new();
        a.push_str(sc::GATEWAY_NAME, rec.get_str(sc::GATEWAY_NAME).or(gateway));
        a.push_str(sc::ROUTE_NAME, rec.get_str(sc::ROUTE_NAME));
        a.push_str(
            sc::GEN_AI_PROVIDER_NAME,
            rec.get_str(sc::GEN_AI_PROVIDER_NAME),
        );
        a.push_str(
            sc::GEN_AI_REQUEST_MODEL,
            rec.get_str(sc::GEN_AI_REQUEST_MODEL),
        );
        if let Some(code) = rec.get_i64(sc::HTTP_RESPONSE_STATUS_CODE) {
            a.push(sc::HTTP_RESPONSE_STATUS_CODE, ARef::Int(code));
        }
        a.push_str(sc::ERROR_TYPE, rec.get_str(sc::ERROR_TYPE));
        for key in [sc::POLICY_DENIED, sc::BUDGET_DENIED] {
            if let Some(b) = rec.get_bool(key) {
                a.push(key, ARef::Bool(b));
            }
        }
        a.push_str(sc::AGENT_NAMESPACE, rec.get_str(sc::AGENT_NAMESPACE));
        self.requests.add(&a, 1.0, max);
        if let Some(secs) = duration_seconds(rec) {
            self.request_duration.add(&a, secs, max);
        }
        // Only what was priced: an unpriced transaction adds nothing (never 0).
        if let Some(AttrValue::Float(usd)) = rec.get(sc::COST_USD) {
            if usd.is_finite() && *usd >= 0.0 {
                self.request_cost.add(&a, *usd, max);
            }
        }
        for (key, ty) in [
            (sc::GEN_AI_USAGE_INPUT_TOKENS, "input"),
            (sc::GEN_AI_USAGE_OUTPUT_TOKENS, "output"),
        ] {
            if let Some(n) = rec.get_i64(key).filter(|n| *n >= 0) {
                let mut t = a;
                t.push(sc::GEN_AI_TOKEN_TYPE, ARef::Str(ty));
                self.request_tokens.add(&t, n as f64, max);
            }
        }
    }

    /// Writes every instrument as a Prometheus family, with or without
    /// data (so a dashboard finds every name from the start).
    pub fn write_prometheus(&self, m: &mut admin::Metrics<'_, '_>) -> std::fmt::Result {
        for i in self.instruments() {
            i.write_prometheus(m)?;
        }
        Ok(())
    }

    /// Series kept and points in the overflow series, per instrument.
    fn occupancy(&self) -> Vec<(&'static str, usize, u64)> {
        self.instruments()
            .into_iter()
            .map(|i| {
                let over = match &i.overflow {
                    Some(Point::Sum(s)) => u64::try_from(*s).unwrap_or(0),
                    Some(Point::FSum(s)) => *s as u64,
                    Some(Point::Hist { count, .. }) => *count,
                    None => 0,
                };
                (i.name, i.series.len(), over)
            })
            .collect()
    }

    /// Every instrument with data, plus `egret.otlp.dropped` per signal.
    pub fn metrics(&self, now_ns: u64, dropped: &[(Signal, u64)]) -> Vec<Metric> {
        self.metrics_with(now_ns, dropped, AggregationTemporality::Cumulative as i32)
    }

    fn metrics_with(
        &self,
        now_ns: u64,
        dropped: &[(Signal, u64)],
        temporality: i32,
    ) -> Vec<Metric> {
        let mut out: Vec<Metric> = self
            .instruments()
            .into_iter()
            .filter_map(|i| i.to_metric(self.start_ns, now_ns, temporality))
            .collect();
        out.push(Metric {
            name: sc::METRIC_OTLP_DROPPED.to_owned(),
            description: "Records and points the OTLP exporter dropped (queue full, export failed)"
                .to_owned(),
            unit: "{item}".to_owned(),
            data: Some(Data::Sum(Sum {
                data_points: dropped
                    .iter()
                    .map(|(signal, n)| NumberDataPoint {
                        attributes: vec![encode::kv(
                            sc::OTLP_SIGNAL,
                            encode::str_value(signal.as_str()),
                        )],
                        start_time_unix_nano: self.start_ns,
                        time_unix_nano: now_ns,
                        value: Some(number_data_point::Value::AsInt(
                            i64::try_from(*n).unwrap_or(i64::MAX),
                        )),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: temporality,
                is_monotonic: true,
            })),
            ..Default::default()
        });
        out
    }

    /// The export request with delta temporality: what was counted since
    /// the previous call (or the start), `dropped` as the increase over the
    /// totals of the previous call. Resets the aggregation, so a request
    /// that is not delivered loses its points (counted as dropped by the
    /// transport).
    pub fn take_delta(
        &mut self,
        ctx: &encode::EncodeContext,
        now_ns: u64,
        dropped: &[(Signal, u64)],
    ) -> (ExportMetricsServiceRequest, usize) {
        let increase: Vec<(Signal, u64)> = dropped
            .iter()
            .map(|(sig, n)| {
                let before = self
                    .dropped_before
                    .iter()
                    .find(|(s, _)| s == sig)
                    .map_or(0, |(_, b)| *b);
                (*sig, n.saturating_sub(before))
            })
            .collect();
        let metrics = self.metrics_with(now_ns, &increase, AggregationTemporality::Delta as i32);
        self.dropped_before = dropped.to_vec();
        for i in self.instruments_mut() {
            i.series.clear();
            i.overflow = None;
        }
        self.start_ns = now_ns;
        Self::wrap(ctx, metrics)
    }

    /// The export request, and how many data points it holds.
    pub fn request(
        &self,
        ctx: &encode::EncodeContext,
        now_ns: u64,
        dropped: &[(Signal, u64)],
    ) -> (ExportMetricsServiceRequest, usize) {
        Self::wrap(ctx, self.metrics(now_ns, dropped))
    }

    fn wrap(
        ctx: &encode::EncodeContext,
        metrics: Vec<Metric>,
    ) -> (ExportMetricsServiceRequest, usize) {
        let n = metrics.iter().map(points_in).sum();
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(encode::resource(&ctx.resource, None)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(encode::scope()),
                    metrics,
                    schema_url: encode::SEMCONV_SCHEMA_URL.to_owned(),
                }],
                schema_url: String::new(),
            }],
        };
        (req, n)
    }
}

/// An attribute name as a Prometheus label name (dots → underscores).
fn prometheus_label(key: &str) -> String {
    key.replace('.', "_")
}

/// The metrics on the admin `/metrics` endpoint: one aggregation over
/// every record the spool kept, split by gateway, rendered in Prometheus
/// names ([`Aggregator::write_prometheus`]). The recorder feeds it once per
/// batch, on its own thread; allocation happens only for new series.
pub struct PromMetrics {
    agg: Mutex<Aggregator>,
    max_series: usize,
}

impl std::fmt::Debug for PromMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromMetrics")
            .field("max_series", &self.max_series)
            .finish_non_exhaustive()
    }
}

impl PromMetrics {
    pub fn new(max_series: usize) -> PromMetrics {
        let max_series = max_series.max(1);
        PromMetrics {
            agg: Mutex::new(Aggregator::new(0, max_series)),
            max_series,
        }
    }

    /// Counts durable records (every series split by their gateway).
    pub fn record_all<'r>(&self, recs: impl IntoIterator<Item = &'r Record>) {
        let mut agg = self.agg.lock().unwrap_or_else(|e| e.into_inner());
        for r in recs {
            agg.record(r, r.get_str(sc::GATEWAY_NAME));
        }
    }
}

impl admin::Report for PromMetrics {
    fn metrics(&self, m: &mut admin::Metrics<'_, '_>) -> std::fmt::Result {
        let agg = self.agg.lock().unwrap_or_else(|e| e.into_inner());
        agg.write_prometheus(m)?;
        let occupancy = agg.occupancy();
        drop(agg);
        let series: Vec<(admin::Labels<'_>, i64)> = occupancy
            .iter()
            .map(|(name, n, _)| {
                (
                    vec![("instrument", (*name).to_owned())],
                    admin::gauge_value(*n as u64),
                )
            })
            .collect();
        m.gauge(
            "egret_metric_series",
            "Series each instrument keeps (at most node.metrics.maxSeries; past it points go to the otel_metric_overflow series)",
            &series,
        )
    }

    fn status(&self, s: &mut admin::Status) {
        let occupancy = self
            .agg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .occupancy();
        let instruments: serde_json::Map<String, serde_json::Value> = occupancy
            .into_iter()
            .map(|(name, series, overflow)| {
                (
                    name.to_owned(),
                    serde_json::json!({"series": series, "overflow_points": overflow}),
                )
            })
            .collect();
        s.insert(
            "metrics".into(),
            serde_json::json!({"max_series": self.max_series, "instruments": instruments}),
        );
    }
}

fn points_in(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::Gauge(g)) => g.data_points.len(),
        _ => 0,
    }
}

/// Decimal text of an HTTP status code in `buf` (no allocation).
fn status_text(code: i64, buf: &mut [u8; 24]) -> &str {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let n = match write!(cur, "{code}") {
        Ok(()) => usize::try_from(cur.position()).unwrap_or(0),
        Err(_) => 0,
    };
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::otlp::encode::tests::txn;
    use prost::Message;
    use std::sync::Arc;

    fn find<'a>(ms: &'a [Metric], name: &str) -> &'a Metric {
        ms.iter().find(|m| m.name == name).unwrap()
    }

    fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
        attrs.iter().find(|a| a.key == key).and_then(|a| {
            match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    #[test]
    fn histograms_use_semconv_buckets() {
        let mut agg = Aggregator::new(10, 100);
        let mut r = txn(200);
        r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 16i64); // boundary: bucket (4, 16]
        r.set(sc::GEN_AI_USAGE_OUTPUT_TOKENS, 100_000_000i64); // overflow bucket
        agg.record(&r, None);
        r.set(sc::GEN_AI_USAGE_INPUT_TOKENS, 17i64);
        agg.record(&r, None);
        let ctx = encode::EncodeContext {
            resource: Default::default(),
            conventions: Default::default(),
        };
        let (req, n) = agg.request(&ctx, 20, &[(Signal::Traces, 3)]);
        let back = ExportMetricsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        let ms = &back.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(n, ms.iter().map(points_in).sum::<usize>());

        let tokens = find(ms, sc::METRIC_GEN_AI_TOKEN_USAGE);
        assert_eq!(tokens.unit, "{token}");
        let Some(Data::Histogram(h)) = &tokens.data else {
            panic!("not a histogram")
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let input = h
            .data_points
            .iter()
            .find(|p| attr_str(&p.attributes, sc::GEN_AI_TOKEN_TYPE) == Some("input"))
            .unwrap();
        assert_eq!(input.explicit_bounds, TOKEN_BUCKETS);
        assert_eq!(input.bucket_counts.len(), TOKEN_BUCKETS.len() + 1);
        assert_eq!(input.bucket_counts[2], 1, "16 falls in (4,16]");
        assert_eq!(input.bucket_counts[3], 1, "17 falls in (16,64]");
        assert_eq!(input.count, 2);
        assert_eq!(input.sum, Some(33.0));
        assert_eq!((input.min, input.max), (Some(16.0), Some(17.0)));
        assert_eq!((input.start_time_unix_nano, input.time_unix_nano), (10, 20));
        assert_eq!(
            attr_str(&input.attributes, sc::GEN_AI_PROVIDER_NAME),
            Some("openai")
        );
        assert_eq!(
            attr_str(&input.attributes, sc::GEN_AI_OPERATION_NAME),
            Some("chat")
        );
        assert_eq!(
            attr_str(&input.attributes, sc::GEN_AI_REQUEST_MODEL),
            Some("gpt-4o")
        );
        assert_eq!(
            attr_str(&input.attributes, sc::GEN_AI_RESPONSE_MODEL),
            Some("gpt-4o-2024-08-06")
        );
        assert_eq!(
            attr_str(&input.attributes, sc::SERVER_ADDRESS),
            Some("api.openai.com")
        );
        let port = |p: &HistogramDataPoint| {
            p.attributes
                .iter()
                .find(|a| a.key == sc::SERVER_PORT)
                .and_then(|a| a.value.as_ref())
                .and_then(|v| v.value.clone())
        };
        assert_eq!(port(input), Some(any_value::Value::IntValue(443)));
        let output = h
            .data_points
            .iter()
            .find(|p| attr_str(&p.attributes, sc::GEN_AI_TOKEN_TYPE) == Some("output"))
            .unwrap();
        assert_eq!(output.bucket_counts[TOKEN_BUCKETS.len()], 2);

        let dur = find(ms, sc::METRIC_GEN_AI_OPERATION_DURATION);
        assert_eq!(dur.unit, "s");
        let Some(Data::Histogram(h)) = &dur.data else {
            panic!("not a histogram")
        };
        assert!(h
            .data_points
            .iter()
            .all(|p| port(p) == Some(any_value::Value::IntValue(443))));
        let Some(Data::Histogram(h)) = &dur.data else {
            panic!()
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, DURATION_BUCKETS);
        // 1.5 s falls in (1.28, 2.56].
        assert_eq!(p.bucket_counts[8], 2);
        assert_eq!(p.sum, Some(3.0));

        let tx = find(ms, sc::METRIC_TRANSACTIONS);
        let Some(Data::Sum(s)) = &tx.data else {
            panic!()
        };
        assert!(s.is_monotonic);
        assert_eq!(
            attr_str(&s.data_points[0].attributes, sc::HTTP_STATUS_CLASS),
            Some("2xx")
        );
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsInt(2))
        );
        let dropped = find(ms, sc::METRIC_OTLP_DROPPED);
        let Some(Data::Sum(s)) = &dropped.data else {
            panic!()
        };
        assert_eq!(
            attr_str(&s.data_points[0].attributes, sc::OTLP_SIGNAL),
            Some("traces")
        );
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsInt(3))
        );
    }

    #[test]
    fn errors_carry_error_type_on_duration() {
        let mut agg = Aggregator::new(0, 100);
        agg.record(&txn(503), None);
        let ms = agg.metrics(1, &[]);
        let Some(Data::Histogram(h)) = &find(&ms, sc::METRIC_GEN_AI_OPERATION_DURATION).data else {
            panic!()
        };
        assert_eq!(
            attr_str(&h.data_points[0].attributes, sc::ERROR_TYPE),
            Some("503")
        );
        let Some(Data::Sum(s)) = &find(&ms, sc::METRIC_TRANSACTIONS).data else {
            panic!()
        };
        assert_eq!(
            attr_str(&s.data_points[0].attributes, sc::HTTP_STATUS_CLASS),
            Some("5xx")
        );
    }

    #[test]
    fn flows_count_and_bytes_by_direction() {
        let mut agg = Aggregator::new(0, 100);
        let mut f = Record::new(sc::KIND_FLOW);
        f.set(sc::L4_BYTES_SANDBOX_TX, 100i64);
        f.set(sc::L4_BYTES_SANDBOX_RX, 1000i64);
        f.set(sc::L4_REDIRECTED, true);
        agg.record(&f, None);
        agg.record(&f, None);
        let ms = agg.metrics(1, &[]);
        let Some(Data::Sum(s)) = &find(&ms, sc::METRIC_L4_BYTES).data else {
            panic!()
        };
        let by_dir = |d: &str| {
            s.data_points
                .iter()
                .find(|p| attr_str(&p.attributes, sc::NETWORK_IO_DIRECTION) == Some(d))
                .and_then(|p| p.value)
        };
        assert_eq!(
            by_dir("transmit"),
            Some(number_data_point::Value::AsInt(200))
        );
        assert_eq!(
            by_dir("receive"),
            Some(number_data_point::Value::AsInt(2000))
        );
        let Some(Data::Sum(s)) = &find(&ms, sc::METRIC_FLOWS).data else {
            panic!()
        };
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsInt(2))
        );
        assert!(ms.iter().all(|m| m.name != sc::METRIC_GEN_AI_TOKEN_USAGE));
    }

    #[test]
    fn cardinality_is_capped_with_an_overflow_series() {
        let mut agg = Aggregator::new(0, 3);
        for i in 0..10 {
            let mut r = txn(200);
            r.set(sc::GEN_AI_REQUEST_MODEL, format!("model-{i}"));
            agg.record(&r, None);
        }
        assert_eq!(agg.duration.series.len(), 3);
        let ms = agg.metrics(1, &[]);
        let Some(Data::Histogram(h)) = &find(&ms, sc::METRIC_GEN_AI_OPERATION_DURATION).data else {
            panic!()
        };
        assert_eq!(h.data_points.len(), 4);
        let over = h.data_points.last().unwrap();
        assert_eq!(over.attributes.len(), 1);
        assert_eq!(over.attributes[0].key, sc::OTEL_METRIC_OVERFLOW);
        assert_eq!(over.count, 7);
        // Transactions (one series) are unaffected.
        assert_eq!(agg.transactions.series.len(), 1);
    }

    #[test]
    fn delta_temporality_resets_between_exports() {
        let ctx = encode::EncodeContext {
            resource: Default::default(),
            conventions: Default::default(),
        };
        let mut agg = Aggregator::new(1, DEFAULT_MAX_SERIES);
        let mut flow = Record::new(sc::KIND_FLOW);
        flow.set(sc::L4_BYTES_SANDBOX_TX, 10i64);
        agg.record(&flow, None);
        agg.record(&flow, None);
        let dropped = [(Signal::Traces, 4u64)];
        let (req, _) = agg.take_delta(&ctx, 100, &dropped);
        let ms = &req.resource_metrics[0].scope_metrics[0].metrics;
        let flows = find(ms, sc::METRIC_FLOWS);
        let Some(Data::Sum(sum)) = &flows.data else {
            panic!("{flows:?}")
        };
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Delta as i32
        );
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(2))
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 1);
        let Some(Data::Sum(d)) = &find(ms, sc::METRIC_OTLP_DROPPED).data else {
            panic!()
        };
        assert_eq!(
            d.data_points[0].value,
            Some(number_data_point::Value::AsInt(4))
        );
        // The next export holds only what came after, from the last export on.
        agg.record(&flow, None);
        let (req, _) = agg.take_delta(&ctx, 200, &[(Signal::Traces, 5)]);
        let ms = &req.resource_metrics[0].scope_metrics[0].metrics;
        let Some(Data::Sum(sum)) = &find(ms, sc::METRIC_FLOWS).data else {
            panic!()
        };
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 100);
        let Some(Data::Sum(d)) = &find(ms, sc::METRIC_OTLP_DROPPED).data else {
            panic!()
        };
        assert_eq!(
            d.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        let (req, _) = agg.take_delta(&ctx, 300, &[(Signal::Traces, 5)]);
        let ms = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert!(
            ms.iter().all(|m| m.name == sc::METRIC_OTLP_DROPPED),
            "{ms:?}"
        );
    }

    #[test]
    fn tee_splits_by_gateway() {
        let mut agg = Aggregator::new(0, 100);
        agg.record(&txn(200), Some("a"));
        agg.record(&txn(200), Some("b"));
        agg.record(&txn(200), Some("b"));
        assert_eq!(agg.transactions.series.len(), 2);
        let ms = agg.metrics(1, &[]);
        let Some(Data::Sum(s)) = &find(&ms, sc::METRIC_TRANSACTIONS).data else {
            panic!()
        };
        let b = s
            .data_points
            .iter()
            .find(|p| attr_str(&p.attributes, sc::GATEWAY_NAME) == Some("b"))
            .unwrap();
        assert_eq!(b.value, Some(number_data_point::Value::AsInt(2)));
    }

    fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
        attrs.iter().find(|a| a.key == key).and_then(|a| {
            match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::IntValue(i)) => Some(*i),
                _ => None,
            }
        })
    }

    fn attr_bool(attrs: &[KeyValue], key: &str) -> Option<bool> {
        attrs.iter().find(|a| a.key == key).and_then(|a| {
            match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::BoolValue(b)) => Some(*b),
                _ => None,
            }
        })
    }

    fn sum_points(ms: &[Metric], name: &str) -> Vec<NumberDataPoint> {
        match &find(ms, name).data {
            Some(Data::Sum(s)) => s.data_points.clone(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn hist_points(ms: &[Metric], name: &str) -> Vec<HistogramDataPoint> {
        match &find(ms, name).data {
            Some(Data::Histogram(h)) => h.data_points.clone(),
            other => panic!("{name}: {other:?}"),
        }
    }

    /// A transaction with every request key.
    fn keyed(status: i64) -> Record {
        let mut r = txn(status);
        r.set(sc::GATEWAY_NAME, "gw-a");
        r.set(sc::ROUTE_NAME, "openai");
        r.set(sc::POLICY_DENIED, false);
        r.set(sc::BUDGET_DENIED, status == 429);
        r.set(sc::AGENT_NAMESPACE, "team-a");
        if status == 429 {
            r.set(sc::ERROR_TYPE, "budget_exceeded");
        }
        r
    }

    #[test]
    fn request_metrics_count_every_transaction_by_the_request_keys() {
        let mut agg = Aggregator::new(0, 100);
        agg.record(&keyed(200), None);
        agg.record(&keyed(200), None);
        agg.record(&keyed(429), None);
        // Not GenAI, no route, no namespace: counted, with only what it has.
        let mut plain = Record::new(sc::KIND_TRANSACTION);
        plain.set(sc::GATEWAY_NAME, "gw-a");
        plain.set(sc::HTTP_RESPONSE_STATUS_CODE, 404i64);
        plain.set(sc::POLICY_DENIED, true);
        plain.set(sc::DURATION_MS, 30.0);
        agg.record(&plain, None);
        // Refused before any response: no status code, no duration.
        let mut refused = Record::new(sc::KIND_TRANSACTION);
        refused.set(sc::GATEWAY_NAME, "gw-a");
        refused.set(sc::ERROR_TYPE, "client_aborted");
        agg.record(&refused, None);
        let ms = agg.metrics(1, &[]);

        let req = sum_points(&ms, sc::METRIC_REQUESTS);
        assert_eq!(req.len(), 4, "{req:?}");
        let ok = req
            .iter()
            .find(|p| attr_int(&p.attributes, sc::HTTP_RESPONSE_STATUS_CODE) == Some(200))
            .unwrap();
        assert_eq!(ok.value, Some(number_data_point::Value::AsInt(2)));
        for (k, v) in [
            (sc::GATEWAY_NAME, "gw-a"),
            (sc::ROUTE_NAME, "openai"),
            (sc::GEN_AI_PROVIDER_NAME, "openai"),
            (sc::GEN_AI_REQUEST_MODEL, "gpt-4o"),
            (sc::AGENT_NAMESPACE, "team-a"),
        ] {
            assert_eq!(attr_str(&ok.attributes, k), Some(v), "{k}");
        }
        assert_eq!(attr_bool(&ok.attributes, sc::POLICY_DENIED), Some(false));
        assert_eq!(attr_bool(&ok.attributes, sc::BUDGET_DENIED), Some(false));
        assert_eq!(attr_str(&ok.attributes, sc::ERROR_TYPE), None);
        let denied = req
            .iter()
            .find(|p| attr_int(&p.attributes, sc::HTTP_RESPONSE_STATUS_CODE) == Some(429))
            .unwrap();
        assert_eq!(
            attr_str(&denied.attributes, sc::ERROR_TYPE),
            Some("budget_exceeded")
        );
        assert_eq!(attr_bool(&denied.attributes, sc::BUDGET_DENIED), Some(true));
        let p = req
            .iter()
            .find(|p| attr_int(&p.attributes, sc::HTTP_RESPONSE_STATUS_CODE) == Some(404))
            .unwrap();
        let keys: Vec<&str> = p.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                sc::GATEWAY_NAME,
                sc::HTTP_RESPONSE_STATUS_CODE,
                sc::POLICY_DENIED
            ],
            "unknown keys are left out, never 0 or empty"
        );
        let r = req
            .iter()
            .find(|p| attr_str(&p.attributes, sc::ERROR_TYPE) == Some("client_aborted"))
            .unwrap();
        assert_eq!(attr_int(&r.attributes, sc::HTTP_RESPONSE_STATUS_CODE), None);

        // Duration: every transaction that has one (not the refused one).
        let dur = hist_points(&ms, sc::METRIC_REQUEST_DURATION);
        assert_eq!(dur.iter().map(|p| p.count).sum::<u64>(), 4);
        assert_eq!(dur[0].explicit_bounds, DURATION_BUCKETS);
        let plain_dur = dur
            .iter()
            .find(|p| attr_int(&p.attributes, sc::HTTP_RESPONSE_STATUS_CODE) == Some(404))
            .unwrap();
        assert_eq!(plain_dur.bucket_counts[2], 1, "30 ms falls in (0.02, 0.04]");

        // Tokens: summed by the same keys plus the token type.
        let tok = sum_points(&ms, sc::METRIC_REQUEST_TOKENS);
        let ok_in = tok
            .iter()
            .find(|p| {
                attr_int(&p.attributes, sc::HTTP_RESPONSE_STATUS_CODE) == Some(200)
                    && attr_str(&p.attributes, sc::GEN_AI_TOKEN_TYPE) == Some("input")
            })
            .unwrap();
        assert_eq!(ok_in.value, Some(number_data_point::Value::AsInt(24)));
        assert_eq!(tok.len(), 4, "input/output for 200 and 429 only");

        // Cost: only priced transactions, as a fractional sum.
        let mut agg = Aggregator::new(0, 100);
        let mut priced = keyed(200);
        priced.set(sc::COST_USD, 0.25);
        agg.record(&priced, None);
        agg.record(&priced, None);
        agg.record(&keyed(429), None);
        let ms = agg.metrics(1, &[]);
        let cost = sum_points(&ms, sc::METRIC_REQUEST_COST);
        assert_eq!(cost.len(), 1, "the unpriced one adds no series: {cost:?}");
        assert_eq!(cost[0].value, Some(number_data_point::Value::AsDouble(0.5)));
        assert_eq!(find(&ms, sc::METRIC_REQUEST_COST).unit, "USD");
    }

    #[test]
    fn streaming_metrics_come_from_streamed_responses_only() {
        let mut agg = Aggregator::new(0, 100);
        let mut r = txn(200);
        r.set(sc::GEN_AI_REQUEST_STREAM, true);
        r.set(sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, 0.3);
        let mut gaps = ChunkGaps::default();
        for s in [0.005, 0.005, 0.05, 3.0] {
            gaps.observe(s);
        }
        r.set_chunk_gaps(gaps);
        agg.record(&r, None);
        agg.record(&r, None);
        // Not streamed: no streaming metric even with the attributes.
        let mut n = r.clone();
        n.set(sc::GEN_AI_REQUEST_STREAM, false);
        agg.record(&n, None);
        let ms = agg.metrics(1, &[]);
        let ttfc = hist_points(&ms, sc::METRIC_GEN_AI_TIME_TO_FIRST_CHUNK);
        assert_eq!(ttfc.len(), 1);
        assert_eq!(ttfc[0].count, 2);
        assert_eq!(ttfc[0].explicit_bounds, CHUNK_SECONDS_BOUNDS);
        assert_eq!(ttfc[0].bucket_counts[5], 2, "0.3 s falls in (0.16, 0.32]");
        assert_eq!(
            attr_str(&ttfc[0].attributes, sc::GEN_AI_REQUEST_MODEL),
            Some("gpt-4o")
        );
        assert_eq!(attr_str(&ttfc[0].attributes, sc::ERROR_TYPE), None);
        let tpoc = hist_points(&ms, sc::METRIC_GEN_AI_TIME_PER_OUTPUT_CHUNK);
        assert_eq!(tpoc.len(), 1);
        let p = &tpoc[0];
        assert_eq!(p.count, 8, "every gap of both streams");
        assert_eq!(p.bucket_counts[0], 4);
        assert_eq!(p.bucket_counts[3], 2, "0.05 s falls in (0.04, 0.08]");
        assert_eq!(p.bucket_counts[9], 2, "3 s falls in (2.56, 5.12]");
        assert_eq!((p.min, p.max), (Some(0.005), Some(3.0)));
        assert!((p.sum.unwrap() - 2.0 * 3.06).abs() < 1e-9);
        // The cap applies to merged histograms too.
        let mut agg = Aggregator::new(0, 1);
        for m in ["a", "b"] {
            let mut x = r.clone();
            x.set(sc::GEN_AI_REQUEST_MODEL, m);
            agg.record(&x, None);
        }
        assert_eq!(agg.time_per_output_chunk.series.len(), 1);
        match &agg.time_per_output_chunk.overflow {
            Some(Point::Hist { count, .. }) => assert_eq!(*count, 4),
            other => panic!("{other:?}"),
        }
    }

    /// The `/metrics` text of an admin endpoint holding `m`.
    fn prometheus_text(m: Arc<PromMetrics>) -> String {
        let admin = admin::Admin::new(vec![m]);
        admin.metrics_text().unwrap()
    }

    #[test]
    fn prometheus_text_has_the_names_labels_and_an_overflow_series() {
        let m = Arc::new(PromMetrics::new(2));
        let recs: Vec<Record> = (0..5)
            .map(|i| {
                let mut r = keyed(200);
                r.set(sc::GEN_AI_REQUEST_MODEL, format!("model-{i}"));
                r.set(sc::GEN_AI_REQUEST_STREAM, true);
                r.set(sc::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, 0.05);
                r
            })
            .collect();
        m.record_all(&recs);
        let text = prometheus_text(m.clone());
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line {prefix}\n{text}"))
                .to_owned()
        };
        // Two label sets kept, three counted in the overflow series.
        let l = line("egret_requests_total{otel_metric_overflow=\"true\"}");
        assert!(l.ends_with(" 3"), "{l}");
        let kept = text
            .lines()
            .filter(|l| l.starts_with("egret_requests_total{") && !l.contains("overflow"))
            .collect::<Vec<_>>();
        assert_eq!(kept.len(), 2, "{text}");
        for label in [
            "egret_gateway_name=\"gw-a\"",
            "egret_route_name=\"openai\"",
            "gen_ai_provider_name=\"openai\"",
            "gen_ai_request_model=\"model-0\"",
            "http_response_status_code=\"200\"",
            "egret_policy_denied=\"false\"",
            "egret_budget_denied=\"false\"",
            "agent_namespace=\"team-a\"",
        ] {
            assert!(kept[0].contains(label), "{label} not in {}", kept[0]);
        }
        assert!(text.contains("# TYPE egret_request_duration_seconds histogram"));
        let inf = line(
            "egret_request_duration_seconds_bucket{le=\"+Inf\",otel_metric_overflow=\"true\"}",
        );
        assert!(inf.ends_with(" 3"), "{inf}");
        line("egret_request_tokens_total{");
        // A fractional counter on /metrics.
        let mut priced = keyed(200);
        priced.set(sc::COST_USD, 0.125);
        let m2 = Arc::new(PromMetrics::new(2));
        m2.record_all([&priced, &priced]);
        let t2 = prometheus_text(m2);
        let cost = t2
            .lines()
            .find(|l| l.starts_with("egret_request_cost_total{"))
            .unwrap_or_else(|| panic!("{t2}"));
        assert!(cost.ends_with(" 0.25"), "{cost}");
        line("gen_ai_client_inference_time_to_first_chunk_seconds_count{");
        line("gen_ai_client_operation_duration_seconds_bucket{");
        line("gen_ai_client_token_usage_sum{");
        // Every family is there before any data (names for dashboards).
        let empty = prometheus_text(Arc::new(PromMetrics::new(2)));
        for family in [
            "egret_requests",
            "egret_request_duration_seconds",
            "egret_request_tokens",
            "egret_request_cost",
            "gen_ai_client_inference_time_to_first_chunk_seconds",
            "gen_ai_client_inference_time_per_output_chunk_seconds",
            "gen_ai_client_operation_duration_seconds",
            "gen_ai_client_token_usage",
            "egret_transactions",
            "egret_flows",
            "egret_l4_bytes",
        ] {
            assert!(
                empty.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{empty}"
            );
        }
        assert!(line("egret_metric_series{instrument=\"egret.requests\"}").ends_with(" 2"));
        let mut st = admin::Status::new();
        admin::Report::status(&*m, &mut st);
        assert_eq!(
            st["metrics"]["instruments"][sc::METRIC_REQUESTS]["overflow_points"],
            3
        );
    }
}
