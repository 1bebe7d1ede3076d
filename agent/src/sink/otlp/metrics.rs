//! In-memory cumulative metrics with bounded cardinality.
//!
//! [`Aggregator::record`] runs on the capture path (under a short mutex):
//! it looks a series up by a hash of borrowed attribute values and
//! allocates only when it creates a series, which happens at most
//! `max_series` times per instrument. Past the cap, points go to one
//! `otel.metric.overflow=true` series, as the OpenTelemetry SDKs do.
use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
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
    record::{AttrValue, Record},
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
/// Series per instrument before points go to the overflow series.
pub const DEFAULT_MAX_SERIES: usize = 2000;

const MAX_ATTRS: usize = 10;

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
        let mut h = DefaultHasher::new();
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
    Hist {
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
        buckets: Vec<u64>,
    },
}

impl Point {
    fn new(bounds: Option<&[f64]>) -> Point {
        match bounds {
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

struct Series {
    attrs: Vec<(&'static str, AOwned)>,
    point: Point,
}

struct Instrument {
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    bounds: Option<&'static [f64]>,
    series: HashMap<u64, Series>,
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
            series: HashMap::new(),
            overflow: None,
        }
    }

    fn add(&mut self, attrs: &Attrs<'_>, v: f64, max_series: usize) {
        let key = attrs.key();
        let bounds = self.bounds;
        let room = self.series.len() < max_series;
        match self.series.get_mut(&key) {
            Some(s) if attrs.same_as(&s.attrs) => s.point.add(bounds, v),
            None if room => {
                let mut point = Point::new(bounds);
                point.add(bounds, v);
                self.series.insert(
                    key,
                    Series {
                        attrs: attrs.owned_attrs(),
                        point,
                    },
                );
            }
            // Over the cap, or a hash collision between different sets:
            // counted in the overflow series, never merged into another.
            _ => self
                .overflow
                .get_or_insert_with(|| Point::new(bounds))
                .add(bounds, v),
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
                        Point::Sum(_) => None,
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
        Point::Sum(s) => *s,
        Point::Hist { count, .. } => i64::try_from(*count).unwrap_or(i64::MAX),
    };
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsInt(v)),
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
        let mut out: Vec<Metric> = [
            &self.token_usage,
            &self.duration,
            &self.transactions,
            &self.flows,
            &self.l4_bytes,
        ]
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
        for i in [
            &mut self.token_usage,
            &mut self.duration,
            &mut self.transactions,
            &mut self.flows,
            &mut self.l4_bytes,
        ] {
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
}
