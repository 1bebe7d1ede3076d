//! The resolution of a gateway's `otlp` section ([`OtlpConfig`]), with the
//! standard `OTEL_*` environment variables, into what one exporter does.
//!
//! [`resolve`] is pure: the environment comes in as a lookup closure, so
//! every rule below is unit-tested without touching the process env. Every
//! variable it reads is in [`ENV_VARS`] (a test keeps that list, what
//! `resolve` reads and the table in `docs/otlp.md` equal).
//!
//! Endpoint rules, per signal (`traces`, `logs`, `metrics`):
//! 1. the gateway's `endpoint` (a base URL, `${ENV}` expanded) + `/v1/<signal>`;
//!    the environment's endpoints, headers and TLS files are then ignored,
//!    so a credential from `OTEL_EXPORTER_OTLP_HEADERS` never goes to an
//!    endpoint it was not set for;
//! 2. else `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`, a full URL used as is;
//! 3. else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/<signal>`;
//! 4. else the signal is off for that gateway.
//!
//! With `grpc`, the endpoint names the server (scheme, host, port) and the
//! path is the signal's service method. Headers: the gateway's `headers`
//! (`${ENV}` expanded) win over `OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS`,
//! which win over `OTEL_EXPORTER_OTLP_HEADERS` (both `k=v,k2=v2`, values
//! URL-decoded; only used with an endpoint from the environment).
//!
//! Everything else (protocol, compression, timeout, batching, metric
//! interval): the gateway's key when set, else the signal's variable, else
//! the generic variable, else egret's default. Malformed values in the
//! environment are warned about and ignored (the OpenTelemetry rule);
//! malformed config values are errors.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use http::{
    header::{HeaderName, InvalidHeaderName, InvalidHeaderValue},
    uri::InvalidUri,
    HeaderMap, HeaderValue,
};

pub use crate::config::{Compression, Protocol};
use crate::{
    config::{expand_env, ContentMode, Convention, ExpandError, OtlpConfig},
    record::AttrValue,
    semconv as sc,
};

pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const ENV_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const ENV_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const ENV_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
pub const ENV_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
pub const ENV_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
pub const ENV_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
pub const ENV_INSECURE: &str = "OTEL_EXPORTER_OTLP_INSECURE";
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const ENV_METRIC_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
pub const ENV_METRIC_EXPORT_TIMEOUT: &str = "OTEL_METRIC_EXPORT_TIMEOUT";
pub const ENV_TEMPORALITY: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
pub const ENV_K8S_NODE_NAME: &str = "K8S_NODE_NAME";
pub const ENV_NODE_NAME: &str = "NODE_NAME";

/// Every environment variable the OTLP exporters read (besides `${NAME}`s
/// the configuration names itself). `docs/otlp.md` has one row per entry.
pub const ENV_VARS: &[&str] = &[
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "K8S_NODE_NAME",
    "NODE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_EXPORTER_OTLP_LOGS_INSECURE",
    "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BLRP_SCHEDULE_DELAY",
    "OTEL_BLRP_EXPORT_TIMEOUT",
    "OTEL_BLRP_MAX_QUEUE_SIZE",
    "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
];

/// Header MLflow needs on `/v1/traces` (422 without it).
pub const MLFLOW_EXPERIMENT_HEADER: &str = "x-mlflow-experiment-id";
/// Experiment used when the `mlflow` profile is on and the header is not set.
pub const MLFLOW_DEFAULT_EXPERIMENT: &str = "0";
/// `service.name` when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "egret";
/// Per-request timeout when neither the config nor `OTEL_EXPORTER_OTLP_TIMEOUT` sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Records waiting per signal when neither `queueCapacity` nor
/// `OTEL_BSP_MAX_QUEUE_SIZE` / `OTEL_BLRP_MAX_QUEUE_SIZE` sets it.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Metrics export period when neither `metricsInterval` nor
/// `OTEL_METRIC_EXPORT_INTERVAL` sets it.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest metrics export period.
pub const MIN_METRICS_INTERVAL: Duration = Duration::from_millis(100);

/// Why a gateway's `otlp` section (or the environment) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("gateway {gateway:?}: otlp.{field}: environment variable {var} is not set")]
    MissingEnv {
        gateway: String,
        field: String,
        var: String,
    },
    #[error("gateway {gateway:?}: otlp.{field}: {source}")]
    Expand {
        gateway: String,
        field: String,
        #[source]
        source: ExpandError,
    },
    #[error("gateway {gateway:?}: otlp.{field}: {reason}")]
    Invalid {
        gateway: String,
        field: String,
        reason: String,
    },
    #[error("gateway {gateway:?}: invalid OTLP endpoint {url:?} (from {source_name}): {source}")]
    Endpoint {
        gateway: String,
        url: String,
        source_name: String,
        #[source]
        source: UrlError,
    },
    #[error("gateway {gateway:?}: invalid OTLP header {name:?} (from {source_name}): {source}")]
    Header {
        gateway: String,
        name: String,
        source_name: String,
        #[source]
        source: HeaderError,
    },
    #[error("gateway {gateway:?}: {source_name} is set but {missing} is not (mTLS needs both)")]
    ClientAuthHalf {
        gateway: String,
        source_name: String,
        missing: String,
    },
}

/// Why an endpoint URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error(transparent)]
    Parse(#[from] InvalidUri),
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("missing scheme (http:// or https://)")]
    NoScheme,
    #[error("missing host")]
    NoHost,
}

/// Why a header cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error(transparent)]
    Name(#[from] InvalidHeaderName),
    #[error(transparent)]
    Value(#[from] InvalidHeaderValue),
}

/// An OTLP signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
    /// Path appended to a base URL.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
            Signal::Metrics => "/v1/metrics",
        }
    }
    /// The OTLP/gRPC method path.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Logs => "LOGS",
            Signal::Metrics => "METRICS",
        }
    }
    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_<key>`.
    fn var(self, key: &str) -> String {
        format!("OTEL_EXPORTER_OTLP_{}_{key}", self.upper())
    }
    fn env_exporter(self) -> String {
        format!("OTEL_{}_EXPORTER", self.upper())
    }
    /// `OTEL_BSP_<key>` (traces) / `OTEL_BLRP_<key>` (logs).
    fn batch_var(self, key: &str) -> Option<String> {
        match self {
            Signal::Traces => Some(format!("OTEL_BSP_{key}")),
            Signal::Logs => Some(format!("OTEL_BLRP_{key}")),
            Signal::Metrics => None,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file setting and where it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileSetting {
    pub path: PathBuf,
    /// `otlp.certificate`, `OTEL_EXPORTER_OTLP_CERTIFICATE`, …
    pub source: String,
}

/// TLS material of one signal's endpoint (files, read when the exporter starts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    /// CA certificates trusted instead of the system roots.
    pub ca: Option<FileSetting>,
    /// Client certificate chain and key (mTLS); both or neither.
    pub client_cert: Option<FileSetting>,
    pub client_key: Option<FileSetting>,
}

impl TlsFiles {
    /// True when the system roots and no client certificate are used.
    pub fn is_default(&self) -> bool {
        self.ca.is_none() && self.client_cert.is_none()
    }
}

/// Batching of one signal (traces, logs). `None`: egret's default
/// ([`ExportOptions`](super::ExportOptions)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchSettings {
    /// A non-empty batch is sent at least this often.
    pub schedule_delay: Option<Duration>,
    /// Longest time one batch may take to export, retries included.
    pub export_timeout: Option<Duration>,
    /// Records per request at most.
    pub max_batch: Option<usize>,
}

/// Where one signal goes and how.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalTarget {
    /// Full URL (`…/v1/traces`, or the gRPC method path), validated
    /// `http`/`https` with a host.
    pub url: http::Uri,
    /// Headers sent with every request (besides content type/encoding).
    pub headers: HeaderMap,
    pub protocol: Protocol,
    pub compression: Compression,
    /// Per-request timeout.
    pub timeout: Duration,
    pub tls: TlsFiles,
    /// Queue capacity (traces, logs).
    pub queue_capacity: usize,
    pub batch: BatchSettings,
}

/// Aggregation temporality of the exported sums and histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Temporality {
    #[default]
    Cumulative,
    Delta,
}

/// Convention profiles in force (GenAI is always on), and whether the
/// deprecated `gen_ai.system` and the old cache-write name are sent too.
/// The default is a gateway's default `otlp` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conventions {
    pub openinference: bool,
    pub mlflow: bool,
    /// `otlp.emitGenAiSystem`: keep `gen_ai.system` on spans and logs.
    pub gen_ai_system: bool,
    /// `otlp.emitLegacyCacheCreation`: keep
    /// `gen_ai.usage.cache_creation.input_tokens` beside its new name.
    pub legacy_cache_creation: bool,
    /// `otlp.content`: how much of the exchanged content is exported.
    pub content: ContentMode,
    /// `otlp.messages`: the GenAI structured content attributes.
    pub messages: bool,
}

impl Default for Conventions {
    fn default() -> Self {
        Conventions::from_list(&[])
    }
}

impl Conventions {
    pub fn from_list(list: &[Convention]) -> Conventions {
        Conventions {
            openinference: list.contains(&Convention::OpenInference),
            mlflow: list.contains(&Convention::Mlflow),
            gen_ai_system: false,
            legacy_cache_creation: true,
            content: ContentMode::Full,
            messages: false,
        }
    }
    /// Whether a record attribute goes out under the content mode
    /// (`semconv::CONTENT` needs `full`; `semconv::CONTENT_DETAIL` needs
    /// `metadata` or `full`).
    pub fn keeps(&self, key: &str) -> bool {
        self.content.keeps(key)
    }
    /// The conventions of a gateway's `otlp` section.
    pub fn from_config(cfg: &OtlpConfig) -> Conventions {
        Conventions {
            gen_ai_system: cfg.emit_gen_ai_system,
            legacy_cache_creation: cfg.emit_legacy_cache_creation,
            content: cfg.content,
            messages: cfg.messages,
            ..Conventions::from_list(&cfg.conventions)
        }
    }
}

/// The effective settings of one exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// Gateway name (or `dev-tee`); shown in status.
    pub name: String,
    pub traces: Option<SignalTarget>,
    pub logs: Option<SignalTarget>,
    pub metrics: Option<SignalTarget>,
    /// Ratio of invocations kept for traces and logs.
    pub sampling: f64,
    pub conventions: Conventions,
    pub metrics_interval: Duration,
    /// Longest time one metrics export may take, retries included.
    pub metrics_timeout: Option<Duration>,
    pub temporality: Temporality,
    /// Resource attributes (besides `host.name`, filled in at start when absent,
    /// and, for the dev tee, the per-record gateway).
    pub resource: BTreeMap<String, AttrValue>,
    /// The dev tee: records of every gateway, grouped by gateway in the
    /// resource (`egret.gateway.name`), metrics split by that attribute.
    pub tee: bool,
    /// Signals the environment switched off (`OTEL_<SIGNAL>_EXPORTER=none`,
    /// `OTEL_SDK_DISABLED=true`): shown in the status.
    pub switched_off: Vec<Signal>,
    /// Environment entries that were ignored (malformed); log them.
    pub warnings: Vec<String>,
}

impl ExportSettings {
    pub fn target(&self, signal: Signal) -> Option<&SignalTarget> {
        match signal {
            Signal::Traces => self.traces.as_ref(),
            Signal::Logs => self.logs.as_ref(),
            Signal::Metrics => self.metrics.as_ref(),
        }
    }
    fn target_mut(&mut self, signal: Signal) -> &mut Option<SignalTarget> {
        match signal {
            Signal::Traces => &mut self.traces,
            Signal::Logs => &mut self.logs,
            Signal::Metrics => &mut self.metrics,
        }
    }
    /// True when at least one signal has a target.
    pub fn any(&self) -> bool {
        self.traces.is_some() || self.logs.is_some() || self.metrics.is_some()
    }
}

/// Parses the `k=v,k2=v2` list of `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES` (keys trimmed, values trimmed and
/// percent-decoded). Malformed entries are skipped and reported.
pub fn parse_kv_list(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for item in text.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => match percent_decode(v.trim()) {
                Some(v) => out.push((k.trim().to_owned(), v)),
                None => bad.push(item.trim().to_owned()),
            },
            _ => bad.push(item.trim().to_owned()),
        }
    }
    (out, bad)
}

/// `%XX` decoding (W3C Baggage style; `+` is kept). `None` for a bad escape
/// or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Appends a signal path to a base URL (one `/` between them).
pub fn join_base(base: &str, signal: Signal) -> String {
    format!("{}{}", base.trim_end_matches('/'), signal.path())
}

fn parse_url(url: &str) -> Result<http::Uri, UrlError> {
    let uri: http::Uri = url.parse()?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => return Err(UrlError::Scheme(other.to_owned())),
        None => return Err(UrlError::NoScheme),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    Ok(uri)
}

/// The gRPC method URL of `signal` on the server `endpoint` names
/// (`http(s)://host:port[/ignored]`, or `host:port` whose scheme
/// `insecure` decides).
fn grpc_url(endpoint: &str, signal: Signal, insecure: bool) -> Result<http::Uri, UrlError> {
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_owned()
    } else if insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    };
    let base = parse_url(&with_scheme)?;
    let authority = base.authority().ok_or(UrlError::NoHost)?;
    let url = format!(
        "{}://{}{}",
        base.scheme_str().unwrap_or("https"),
        authority,
        signal.grpc_path()
    );
    Ok(url.parse()?)
}

/// What an `OTEL_<SIGNAL>_EXPORTER` list asks of egret.
fn exporter_switch(name: &str, v: &str, warnings: &mut Vec<String>) -> bool {
    let mut none = false;
    let mut otlp = false;
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.eq_ignore_ascii_case("none") {
            none = true;
        } else if part.eq_ignore_ascii_case("otlp") {
            otlp = true;
        } else {
            warnings.push(format!(
                "{name}: ignoring {part:?} (egret exports OTLP only: otlp or none)"
            ));
        }
    }
    // Off only when `none` is asked for and `otlp` is not.
    none && !otlp
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Reads the environment, collecting warnings about malformed values.
struct EnvReader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<String>,
}

impl EnvReader<'_> {
    fn get(&self, name: &str) -> Option<String> {
        non_empty((self.env)(name))
    }
    /// The signal's variable, else the generic one; with the name read.
    fn layered(&self, signal: Signal, key: &str) -> Option<(String, String)> {
        let specific = signal.var(key);
        if let Some(v) = self.get(&specific) {
            return Some((specific, v));
        }
        let generic = format!("OTEL_EXPORTER_OTLP_{key}");
        self.get(&generic).map(|v| (generic, v))
    }
    /// A boolean: `true` (any case) is true; `false`, empty and unset are
    /// false; anything else is false with a warning.
    fn bool(&mut self, name: &str, v: Option<String>) -> bool {
        match v {
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                self.warnings
                    .push(format!("{name}: {v:?} is not true or false; using false"));
                false
            }
            None => false,
        }
    }
    /// A positive integer, else a warning and `None`.
    fn positive(&mut self, name: &str) -> Option<u64> {
        let v = self.get(name)?;
        match v.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.warnings.push(format!(
                    "{name}: ignoring {v:?} (a positive integer expected)"
                ));
                None
            }
        }
    }
    fn millis(&mut self, name: &str) -> Option<Duration> {
        self.positive(name).map(Duration::from_millis)
    }
    fn count(&mut self, name: &str) -> Option<usize> {
        self.positive(name)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Resolves one gateway's effective export settings. `Ok(None)` means no
/// signal has an endpoint: nothing to start. Signals with an endpoint that
/// the environment switched off are listed in
/// [`ExportSettings::switched_off`] (shown in the status; when every one
/// is, the exporter starts with no signal).
pub fn resolve(
    gateway: &str,
    cfg: &OtlpConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ExportSettings>, SettingsError> {
    // Errors, status and metrics name the exporter: `<gateway>` for the
    // primary one, `<gateway>/<name>` for a named one.
    let gateway_name = gateway;
    let display = match cfg.name.as_deref() {
        Some(n) => format!("{gateway}/{n}"),
        None => gateway.to_owned(),
    };
    let gateway = display.as_str();
    let invalid = |field: &str, reason: String| SettingsError::Invalid {
        gateway: gateway.to_owned(),
        field: field.to_owned(),
        reason,
    };
    if !(cfg.sampling.is_finite() && (0.0..=1.0).contains(&cfg.sampling)) {
        return Err(invalid(
            "sampling",
            format!("{} is not a ratio between 0.0 and 1.0", cfg.sampling),
        ));
    }
    if cfg.queue_capacity == Some(0) {
        return Err(invalid("queueCapacity", "must be at least 1".into()));
    }
    if cfg
        .metrics_interval
        .is_some_and(|i| i < MIN_METRICS_INTERVAL)
    {
        return Err(invalid("metricsInterval", "must be at least 100ms".into()));
    }
    if cfg.timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid("timeout", "must not be 0".into()));
    }
    if cfg.client_certificate.is_some() != cfg.client_key.is_some() {
        let (set, missing) = if cfg.client_certificate.is_some() {
            ("otlp.clientCertificate", "otlp.clientKey")
        } else {
            ("otlp.clientKey", "otlp.clientCertificate")
        };
        return Err(SettingsError::ClientAuthHalf {
            gateway: gateway.to_owned(),
            source_name: set.into(),
            missing: missing.into(),
        });
    }
    let mut rd = EnvReader {
        env,
        warnings: Vec::new(),
    };
    let sdk_disabled = {
        let v = rd.get(ENV_SDK_DISABLED);
        rd.bool(ENV_SDK_DISABLED, v)
    };

    let expand_err = |field: String, e: ExpandError| match e {
        ExpandError::Unset(var) => SettingsError::MissingEnv {
            gateway: gateway.to_owned(),
            field,
            var,
        },
        source => SettingsError::Expand {
            gateway: gateway.to_owned(),
            field,
            source,
        },
    };
    // Config headers, `${ENV}` expanded.
    let mut cfg_headers = Vec::with_capacity(cfg.headers.len());
    for (k, v) in &cfg.headers {
        let value = expand_env(v, env).map_err(|e| expand_err(format!("headers.{k}"), e))?;
        cfg_headers.push((k.clone(), value));
    }
    let expand_opt = |field: &str, v: &Option<String>| -> Result<Option<String>, SettingsError> {
        match v.as_deref().map(str::trim) {
            Some(e) if !e.is_empty() => Ok(Some(
                expand_env(e, env).map_err(|err| expand_err(field.into(), err))?,
            )),
            _ => Ok(None),
        }
    };
    let cfg_endpoint = expand_opt("endpoint", &cfg.endpoint)?;
    let cfg_file =
        |field: &str, v: &Option<String>| -> Result<Option<FileSetting>, SettingsError> {
            Ok(expand_opt(field, v)?.map(|p| FileSetting {
                path: PathBuf::from(p),
                source: format!("otlp.{field}"),
            }))
        };
    let cfg_tls = TlsFiles {
        ca: cfg_file("certificate", &cfg.certificate)?,
        client_cert: cfg_file("clientCertificate", &cfg.client_certificate)?,
        client_key: cfg_file("clientKey", &cfg.client_key)?,
    };
    let env_headers = |rd: &mut EnvReader<'_>, name: &str| -> Vec<(String, String)> {
        match rd.get(name) {
            Some(v) => {
                let (kv, bad) = parse_kv_list(&v);
                for b in bad {
                    rd.warnings
                        .push(format!("{name}: ignoring malformed entry {b:?}"));
                }
                kv
            }
            None => vec![],
        }
    };
    let generic_env_headers = env_headers(&mut rd, ENV_HEADERS);
    let conventions = Conventions::from_config(cfg);

    let metrics_interval = match cfg.metrics_interval {
        Some(i) => i,
        None => match rd.millis(ENV_METRIC_EXPORT_INTERVAL) {
            Some(i) if i < MIN_METRICS_INTERVAL => {
                rd.warnings.push(format!(
                    "{ENV_METRIC_EXPORT_INTERVAL}: {} ms is below the 100 ms floor; using 100 ms",
                    i.as_millis()
                ));
                MIN_METRICS_INTERVAL
            }
            Some(i) => i,
            None => DEFAULT_METRICS_INTERVAL,
        },
    };
    let metrics_timeout = rd.millis(ENV_METRIC_EXPORT_TIMEOUT);
    let temporality = match rd.get(ENV_TEMPORALITY) {
        None => Temporality::Cumulative,
        Some(v) if v.eq_ignore_ascii_case("cumulative") => Temporality::Cumulative,
        Some(v) if v.eq_ignore_ascii_case("delta") || v.eq_ignore_ascii_case("lowmemory") => {
            Temporality::Delta
        }
        Some(v) => {
            rd.warnings.push(format!(
                "{ENV_TEMPORALITY}: ignoring {v:?} (cumulative, delta or lowmemory); using cumulative"
            ));
            Temporality::Cumulative
        }
    };

    let mut settings = ExportSettings {
        name: gateway.to_owned(),
        traces: None,
        logs: None,
        metrics: None,
        sampling: cfg.sampling,
        conventions,
        metrics_interval,
        metrics_timeout,
        temporality,
        resource: BTreeMap::new(),
        tee: false,
        switched_off: vec![],
        warnings: vec![],
    };
    for signal in Signal::ALL {
        let enabled_in_cfg = match signal {
            Signal::Traces => cfg.signals.traces,
            Signal::Logs => cfg.signals.logs,
            Signal::Metrics => cfg.signals.metrics,
        };
        let exporter_var = signal.env_exporter();
        let off_by_var = match rd.get(&exporter_var) {
            Some(v) => exporter_switch(&exporter_var, &v, &mut rd.warnings),
            None => false,
        };
        if !enabled_in_cfg {
            continue;
        }
        let has_endpoint = cfg_endpoint.is_some()
            || rd.get(&signal.var("ENDPOINT")).is_some()
            || rd.get(ENV_ENDPOINT).is_some();
        if has_endpoint && (sdk_disabled || off_by_var) {
            settings.switched_off.push(signal);
            continue;
        }

        // Behaviour: config key > signal variable > generic variable > default.
        let protocol = match cfg.protocol {
            Some(p) => p,
            None => match rd.layered(signal, "PROTOCOL") {
                Some((name, v)) => Protocol::parse(&v).unwrap_or_else(|| {
                    rd.warnings.push(format!(
                        "{name}: ignoring {v:?} (http/protobuf, http/json or grpc); using http/protobuf"
                    ));
                    Protocol::HttpProtobuf
                }),
                None => Protocol::HttpProtobuf,
            },
        };
        let compression = match cfg.compression {
            Some(c) => c,
            None => match rd.layered(signal, "COMPRESSION") {
                Some((name, v)) => Compression::parse(&v).unwrap_or_else(|| {
                    rd.warnings
                        .push(format!("{name}: ignoring {v:?} (gzip or none); using gzip"));
                    Compression::Gzip
                }),
                None => Compression::Gzip,
            },
        };
        let timeout = match cfg.timeout {
            Some(t) => t,
            None => {
                let specific = signal.var("TIMEOUT");
                rd.millis(&specific)
                    .or_else(|| rd.millis(ENV_TIMEOUT))
                    .unwrap_or(DEFAULT_TIMEOUT)
            }
        };
        let mut batch = BatchSettings::default();
        let mut queue_capacity = cfg.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if signal == Signal::Metrics {
            batch.schedule_delay = Some(metrics_interval);
            batch.export_timeout = metrics_timeout;
        } else {
            let var = |k: &str| signal.batch_var(k).unwrap_or_default();
            batch.schedule_delay = rd.millis(&var("SCHEDULE_DELAY"));
            batch.export_timeout = rd.millis(&var("EXPORT_TIMEOUT"));
            let queue_var = var("MAX_QUEUE_SIZE");
            if cfg.queue_capacity.is_none() {
                if let Some(q) = rd.count(&queue_var) {
                    queue_capacity = q;
                }
            }
            let batch_var = var("MAX_EXPORT_BATCH_SIZE");
            batch.max_batch = rd.count(&batch_var);
            if let Some(b) = batch.max_batch.filter(|b| *b > queue_capacity) {
                rd.warnings.push(format!(
                    "{batch_var}: {b} is more than the queue ({queue_capacity}); using {queue_capacity}"
                ));
                batch.max_batch = Some(queue_capacity);
            }
        }
        // Connection: from where the endpoint comes.
        let insecure = {
            let v = rd.layered(signal, "INSECURE");
            match v {
                Some((name, v)) => rd.bool(&name, Some(v)),
                None => false,
            }
        };
        let env_file = |rd: &EnvReader<'_>, key: &str| {
            rd.layered(signal, key).map(|(source, v)| FileSetting {
                path: PathBuf::from(v),
                source,
            })
        };
        let env_tls = TlsFiles {
            ca: env_file(&rd, "CERTIFICATE"),
            client_cert: env_file(&rd, "CLIENT_CERTIFICATE"),
            client_key: env_file(&rd, "CLIENT_KEY"),
        };
        let specific_endpoint = rd.get(&signal.var("ENDPOINT"));
        let generic_endpoint = rd.get(ENV_ENDPOINT);
        let (endpoint, per_signal, source_name, mut headers, tls) =
            if let Some(base) = &cfg_endpoint {
                (
                    base.clone(),
                    false,
                    "otlp.endpoint".to_owned(),
                    vec![],
                    cfg_tls.clone(),
                )
            } else if let Some(url) = specific_endpoint {
                let mut h = generic_env_headers.clone();
                h.extend(env_headers(&mut rd, &signal.var("HEADERS")));
                (url, true, signal.var("ENDPOINT"), h, env_tls)
            } else if let Some(base) = generic_endpoint {
                let mut h = generic_env_headers.clone();
                h.extend(env_headers(&mut rd, &signal.var("HEADERS")));
                (base, false, ENV_ENDPOINT.to_owned(), h, env_tls)
            } else {
                continue;
            };
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            let (set, missing) = match (&tls.client_cert, &tls.client_key) {
                (Some(c), None) => (c.source.clone(), "a client key".to_owned()),
                (None, Some(k)) => (k.source.clone(), "a client certificate".to_owned()),
                _ => unreachable!("exactly one is set"),
            };
            return Err(SettingsError::ClientAuthHalf {
                gateway: gateway.to_owned(),
                source_name: set,
                missing,
            });
        }
        headers.extend(cfg_headers.iter().cloned());
        let url_err = |url: &str, source: UrlError| SettingsError::Endpoint {
            gateway: gateway.to_owned(),
            url: url.to_owned(),
            source_name: source_name.clone(),
            source,
        };
        let uri = match protocol {
            Protocol::Grpc => {
                // `INSECURE` belongs to the environment's endpoint; a
                // gateway's scheme-less endpoint is TLS.
                let insecure = insecure && cfg_endpoint.is_none();
                grpc_url(&endpoint, signal, insecure).map_err(|e| url_err(&endpoint, e))?
            }
            _ => {
                let url = if per_signal {
                    endpoint.clone()
                } else {
                    join_base(&endpoint, signal)
                };
                parse_url(&url).map_err(|e| url_err(&url, e))?
            }
        };
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let header_err = |source: HeaderError| SettingsError::Header {
                gateway: gateway.to_owned(),
                name: k.clone(),
                source_name: if cfg.headers.contains_key(&k) {
                    "otlp.headers".to_owned()
                } else {
                    ENV_HEADERS.to_owned()
                },
                source,
            };
            let name =
                HeaderName::from_bytes(k.trim().as_bytes()).map_err(|e| header_err(e.into()))?;
            let value = HeaderValue::from_str(&v).map_err(|e| header_err(e.into()))?;
            // Later sources win: insert replaces.
            map.insert(name, value);
        }
        if conventions.mlflow && !map.contains_key(MLFLOW_EXPERIMENT_HEADER) {
            map.insert(
                HeaderName::from_static(MLFLOW_EXPERIMENT_HEADER),
                HeaderValue::from_static(MLFLOW_DEFAULT_EXPERIMENT),
            );
        }
        *settings.target_mut(signal) = Some(SignalTarget {
            url: uri,
            headers: map,
            protocol,
            compression,
            timeout,
            tls,
            queue_capacity,
            batch,
        });
    }
    let mut warnings = std::mem::take(&mut rd.warnings);
    if !settings.any() && settings.switched_off.is_empty() {
        return Ok(None);
    }
    settings.resource = resource_from_env(env, &mut warnings);
    // The exporter's own resource keys win over the environment's.
    for (k, v) in &cfg.resource_attributes {
        let value =
            expand_env(v, env).map_err(|e| expand_err(format!("resourceAttributes.{k}"), e))?;
        settings
            .resource
            .insert(k.trim().to_owned(), AttrValue::from(value));
    }
    if let Some(name) = cfg.service_name.as_deref().filter(|n| !n.trim().is_empty()) {
        settings
            .resource
            .insert(sc::SERVICE_NAME.to_owned(), AttrValue::from(name.trim()));
    }
    settings
        .resource
        .insert(sc::GATEWAY_NAME.to_owned(), AttrValue::from(gateway_name));
    if conventions.openinference {
        settings.resource.insert(
            sc::OPENINFERENCE_PROJECT_NAME.to_owned(),
            AttrValue::from(gateway_name),
        );
    }
    settings.warnings = warnings;
    Ok(Some(settings))
}

/// Settings of the dev tee: every signal of every gateway to `base_url`
/// (+ `/v1/<signal>`, `http/protobuf` always), nothing sampled away,
/// metrics every 10 s unless `OTEL_METRIC_EXPORT_INTERVAL` says otherwise. The standard signal
/// switches (`OTEL_*_EXPORTER=none`) and resource variables still apply.
pub fn dev_tee(
    base_url: &str,
    conventions: &[Convention],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ExportSettings, SettingsError> {
    let interval_from_env = non_empty(env(ENV_METRIC_EXPORT_INTERVAL)).is_some();
    let cfg = OtlpConfig {
        endpoint: Some(base_url.to_owned()),
        conventions: conventions.to_vec(),
        metrics_interval: (!interval_from_env).then_some(Duration::from_secs(10)),
        // A development receiver speaks OTLP/HTTP, whatever the
        // environment's collector does.
        protocol: Some(Protocol::HttpProtobuf),
        ..OtlpConfig::default()
    };
    let mut s = resolve("dev-tee", &cfg, env)?
        .filter(ExportSettings::any)
        .ok_or_else(|| SettingsError::Invalid {
            gateway: "dev-tee".into(),
            field: "signals".into(),
            reason: "every signal is switched off by the environment".into(),
        })?;
    s.tee = true;
    s.resource.remove(sc::GATEWAY_NAME);
    s.resource.remove(sc::OPENINFERENCE_PROJECT_NAME);
    Ok(s)
}

/// Resource attributes from the environment: `OTEL_RESOURCE_ATTRIBUTES`,
/// `service.name` (`OTEL_SERVICE_NAME` wins), `service.version`,
/// `k8s.node.name` (`K8S_NODE_NAME`, else `NODE_NAME`).
pub fn resource_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, AttrValue> {
    let mut r = BTreeMap::new();
    r.insert(
        sc::SERVICE_NAME.to_owned(),
        AttrValue::from(DEFAULT_SERVICE_NAME),
    );
    r.insert(
        sc::SERVICE_VERSION.to_owned(),
        AttrValue::from(env!("CARGO_PKG_VERSION")),
    );
    if let Some(node) = non_empty(env(ENV_K8S_NODE_NAME)).or_else(|| non_empty(env(ENV_NODE_NAME)))
    {
        r.insert(sc::K8S_NODE_NAME.to_owned(), AttrValue::from(node));
    }
    if let Some(v) = non_empty(env(ENV_RESOURCE_ATTRIBUTES)) {
        let (kv, bad) = parse_kv_list(&v);
        for b in bad {
            warnings.push(format!(
                "{ENV_RESOURCE_ATTRIBUTES}: ignoring malformed entry {b:?}"
            ));
        }
        for (k, v) in kv {
            r.insert(k, AttrValue::from(v));
        }
    }
    if let Some(name) = non_empty(env(ENV_SERVICE_NAME)) {
        r.insert(sc::SERVICE_NAME.to_owned(), AttrValue::from(name));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SignalsConfig;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn url(t: &Option<SignalTarget>) -> String {
        t.as_ref().map(|t| t.url.to_string()).unwrap_or_default()
    }

    #[test]
    fn no_endpoint_anywhere_means_no_exporter() {
        let r = resolve("g", &OtlpConfig::default(), &env_of(&[])).unwrap();
        assert!(r.is_none());
    }

    #[test]
    fn config_endpoint_is_a_base_url() {
        let cfg = OtlpConfig {
            endpoint: Some("https://api.honeycomb.io/".into()),
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env_of(&[])).unwrap().unwrap();
        assert_eq!(url(&s.traces), "https://api.honeycomb.io/v1/traces");
        assert_eq!(url(&s.logs), "https://api.honeycomb.io/v1/logs");
        assert_eq!(url(&s.metrics), "https://api.honeycomb.io/v1/metrics");
        let with_path = OtlpConfig {
            endpoint: Some("http://gw:4318/otlp".into()),
            ..Default::default()
        };
        let s = resolve("g", &with_path, &env_of(&[])).unwrap().unwrap();
        assert_eq!(url(&s.logs), "http://gw:4318/otlp/v1/logs");
    }

    #[test]
    fn env_endpoint_is_the_fallback_and_config_wins() {
        let env = env_of(&[
            (ENV_ENDPOINT, "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://tempo:4318/custom/traces",
            ),
            (ENV_HEADERS, "x-env=1,authorization=Bearer%20abc"),
            ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "x-env=logs"),
        ]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        assert_eq!(url(&s.traces), "http://tempo:4318/custom/traces");
        assert_eq!(url(&s.logs), "http://collector:4318/v1/logs");
        assert_eq!(url(&s.metrics), "http://collector:4318/v1/metrics");
        let t = s.traces.as_ref().unwrap();
        assert_eq!(t.headers["authorization"], "Bearer abc");
        assert_eq!(t.headers["x-env"], "1");
        assert_eq!(s.logs.as_ref().unwrap().headers["x-env"], "logs");

        // A gateway with its own endpoint ignores the environment's endpoints
        // and headers (credentials stay with the endpoint they were set for).
        let cfg = OtlpConfig {
            endpoint: Some("http://mine:4318".into()),
            headers: [("x-cfg".to_owned(), "c".to_owned())].into(),
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env).unwrap().unwrap();
        assert_eq!(url(&s.traces), "http://mine:4318/v1/traces");
        let t = s.traces.as_ref().unwrap();
        assert!(t.headers.get("authorization").is_none());
        assert_eq!(t.headers["x-cfg"], "c");

        // Config headers override environment headers of the same name.
        let cfg = OtlpConfig {
            headers: [("X-Env".to_owned(), "cfg".to_owned())].into(),
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env).unwrap().unwrap();
        assert_eq!(s.metrics.as_ref().unwrap().headers["x-env"], "cfg");
    }

    #[test]
    fn exporter_none_switches_signals_off() {
        let env = env_of(&[
            (ENV_ENDPOINT, "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_LOGS_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", " NONE "),
        ]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        assert!(s.traces.is_none() && s.logs.is_some() && s.metrics.is_none());
        let env = env_of(&[
            (ENV_ENDPOINT, "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_LOGS_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        assert!(!s.any());
        assert_eq!(s.switched_off, Signal::ALL.to_vec());
        let env = env_of(&[(ENV_ENDPOINT, "http://c:4318"), (ENV_SDK_DISABLED, "true")]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        assert!(!s.any());
        assert_eq!(s.switched_off, Signal::ALL.to_vec());
        // Without an endpoint there is nothing to switch off.
        let env = env_of(&[(ENV_SDK_DISABLED, "true")]);
        assert!(resolve("g", &OtlpConfig::default(), &env)
            .unwrap()
            .is_none());
        let cfg = OtlpConfig {
            endpoint: Some("http://c".into()),
            signals: SignalsConfig {
                traces: true,
                logs: false,
                metrics: false,
            },
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env_of(&[])).unwrap().unwrap();
        assert!(s.traces.is_some() && s.logs.is_none() && s.metrics.is_none());
    }

    #[test]
    fn header_env_expansion() {
        // The grammar itself is tested with `config::expand_env`.
        let env = env_of(&[("HONEYCOMB_API_KEY", "k3y"), ("U", "u")]);
        let cfg = OtlpConfig {
            endpoint: Some("https://api.honeycomb.io".into()),
            headers: [(
                "x-honeycomb-team".to_owned(),
                "${HONEYCOMB_API_KEY}".to_owned(),
            )]
            .into(),
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env).unwrap().unwrap();
        assert_eq!(s.logs.as_ref().unwrap().headers["x-honeycomb-team"], "k3y");
        let err = resolve("g", &cfg, &env_of(&[])).unwrap_err();
        assert!(
            matches!(&err, SettingsError::MissingEnv { var, field, .. } if var == "HONEYCOMB_API_KEY" && field == "headers.x-honeycomb-team"),
            "{err}"
        );
        // Endpoints expand too.
        let cfg = OtlpConfig {
            endpoint: Some("http://${HOST}:4318".into()),
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env_of(&[("HOST", "otel")]))
            .unwrap()
            .unwrap();
        assert_eq!(url(&s.traces), "http://otel:4318/v1/traces");
    }

    #[test]
    fn kv_list_parsing() {
        let (kv, bad) = parse_kv_list(" a = 1 ,b=x%2Cy%3Dz,broken,=v,c=%zz, ,d=");
        assert_eq!(
            kv,
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x,y=z".to_owned()),
                ("d".to_owned(), String::new()),
            ]
        );
        assert_eq!(bad, vec!["broken", "=v", "c=%zz"]);
    }

    #[test]
    fn resource_from_env_rules() {
        let env = env_of(&[
            (
                ENV_RESOURCE_ATTRIBUTES,
                "service.name=fromattrs,deployment.environment.name=prod,bad",
            ),
            (ENV_NODE_NAME, "node-b"),
        ]);
        let s = resolve(
            "gw",
            &OtlpConfig {
                endpoint: Some("http://c".into()),
                conventions: vec![Convention::OpenInference],
                ..Default::default()
            },
            &env,
        )
        .unwrap()
        .unwrap();
        let r = &s.resource;
        assert_eq!(r[sc::SERVICE_NAME], AttrValue::from("fromattrs"));
        assert_eq!(r["deployment.environment.name"], AttrValue::from("prod"));
        assert_eq!(r[sc::K8S_NODE_NAME], AttrValue::from("node-b"));
        assert_eq!(r[sc::GATEWAY_NAME], AttrValue::from("gw"));
        assert_eq!(r[sc::OPENINFERENCE_PROJECT_NAME], AttrValue::from("gw"));
        assert!(r.contains_key(sc::SERVICE_VERSION));
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);

        let env = env_of(&[
            (ENV_SERVICE_NAME, "svc"),
            (ENV_RESOURCE_ATTRIBUTES, "service.name=fromattrs"),
            (ENV_K8S_NODE_NAME, "node-a"),
            (ENV_NODE_NAME, "node-b"),
        ]);
        let mut w = vec![];
        let r = resource_from_env(&env, &mut w);
        assert_eq!(r[sc::SERVICE_NAME], AttrValue::from("svc"));
        assert_eq!(r[sc::K8S_NODE_NAME], AttrValue::from("node-a"));
        let r = resource_from_env(&env_of(&[]), &mut w);
        assert_eq!(r[sc::SERVICE_NAME], AttrValue::from(DEFAULT_SERVICE_NAME));
        assert!(!r.contains_key(sc::K8S_NODE_NAME));
    }

    #[test]
    fn mlflow_gets_a_default_experiment_header() {
        let cfg = OtlpConfig {
            endpoint: Some("http://mlflow:5000".into()),
            conventions: vec![Convention::Mlflow],
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env_of(&[])).unwrap().unwrap();
        assert_eq!(
            s.traces.as_ref().unwrap().headers[MLFLOW_EXPERIMENT_HEADER],
            "0"
        );
        let cfg = OtlpConfig {
            headers: [("X-MLflow-Experiment-Id".to_owned(), "7".to_owned())].into(),
            ..cfg
        };
        let s = resolve("g", &cfg, &env_of(&[])).unwrap().unwrap();
        assert_eq!(
            s.traces.as_ref().unwrap().headers[MLFLOW_EXPERIMENT_HEADER],
            "7"
        );
    }

    #[test]
    fn invalid_values_are_rejected() {
        let base = OtlpConfig {
            endpoint: Some("http://c".into()),
            ..Default::default()
        };
        for cfg in [
            OtlpConfig {
                sampling: 1.5,
                ..base.clone()
            },
            OtlpConfig {
                sampling: f64::NAN,
                ..base.clone()
            },
            OtlpConfig {
                queue_capacity: Some(0),
                ..base.clone()
            },
            OtlpConfig {
                endpoint: Some("ftp://c".into()),
                ..base.clone()
            },
            OtlpConfig {
                endpoint: Some("collector:4318".into()),
                ..base.clone()
            },
            OtlpConfig {
                headers: [("bad header".to_owned(), "v".to_owned())].into(),
                ..base.clone()
            },
            OtlpConfig {
                headers: [("x".to_owned(), "line\nbreak".to_owned())].into(),
                ..base.clone()
            },
        ] {
            assert!(resolve("g", &cfg, &env_of(&[])).is_err(), "{cfg:?}");
        }
        let err = resolve(
            "g",
            &OtlpConfig::default(),
            &env_of(&[(ENV_ENDPOINT, "localhost:4318")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains(ENV_ENDPOINT), "{err}");
    }

    #[test]
    fn timeout_from_config_or_env() {
        let base = OtlpConfig {
            endpoint: Some("http://c".into()),
            ..Default::default()
        };
        let s = resolve("g", &base, &env_of(&[])).unwrap().unwrap();
        assert_eq!(s.traces.as_ref().unwrap().timeout, DEFAULT_TIMEOUT);
        let s = resolve("g", &base, &env_of(&[(ENV_TIMEOUT, "2500")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            s.traces.as_ref().unwrap().timeout,
            Duration::from_millis(2500)
        );
        let cfg = OtlpConfig {
            timeout: Some(Duration::from_secs(1)),
            ..base
        };
        let s = resolve("g", &cfg, &env_of(&[(ENV_TIMEOUT, "2500")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.traces.as_ref().unwrap().timeout, Duration::from_secs(1));
    }

    #[test]
    fn metric_export_interval_and_timeout_from_env() {
        let base = OtlpConfig {
            endpoint: Some("http://c".into()),
            ..Default::default()
        };
        let s = resolve("g", &base, &env_of(&[])).unwrap().unwrap();
        assert_eq!(s.metrics_interval, DEFAULT_METRICS_INTERVAL);
        assert_eq!(s.metrics_timeout, None);
        let env = env_of(&[
            (ENV_METRIC_EXPORT_INTERVAL, "1000"),
            (ENV_METRIC_EXPORT_TIMEOUT, "700"),
        ]);
        let s = resolve("g", &base, &env).unwrap().unwrap();
        assert_eq!(s.metrics_interval, Duration::from_secs(1));
        assert_eq!(s.metrics_timeout, Some(Duration::from_millis(700)));
        let m = s.metrics.as_ref().unwrap();
        assert_eq!(m.batch.schedule_delay, Some(Duration::from_secs(1)));
        assert_eq!(m.batch.export_timeout, Some(Duration::from_millis(700)));
        // The config key wins over the variable.
        let cfg = OtlpConfig {
            metrics_interval: Some(Duration::from_secs(5)),
            ..base.clone()
        };
        let s = resolve("g", &cfg, &env).unwrap().unwrap();
        assert_eq!(s.metrics_interval, Duration::from_secs(5));
        // Malformed: a warning and the default; below the floor: the floor.
        let s = resolve("g", &base, &env_of(&[(ENV_METRIC_EXPORT_INTERVAL, "soon")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.metrics_interval, DEFAULT_METRICS_INTERVAL);
        assert!(
            s.warnings[0].contains(ENV_METRIC_EXPORT_INTERVAL),
            "{:?}",
            s.warnings
        );
        let s = resolve("g", &base, &env_of(&[(ENV_METRIC_EXPORT_INTERVAL, "5")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.metrics_interval, MIN_METRICS_INTERVAL);
        // The dev tee's 10 s default yields to the variable too.
        let t = dev_tee("http://t", &[], &env).unwrap();
        assert_eq!(t.metrics_interval, Duration::from_secs(1));
        let t = dev_tee("http://t", &[], &env_of(&[])).unwrap();
        assert_eq!(t.metrics_interval, Duration::from_secs(10));
        let t = dev_tee("http://t", &[], &env_of(&[(ENV_PROTOCOL, "grpc")])).unwrap();
        assert_eq!(t.traces.unwrap().protocol, Protocol::HttpProtobuf);
    }

    /// Every variable `resolve` reads is in `ENV_VARS` and every entry is
    /// read (with endpoints from the environment, all signals on).
    #[test]
    fn env_vars_list_is_what_resolve_reads() {
        let read = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let env = |k: &str| {
            read.lock().unwrap().insert(k.to_owned());
            (k == ENV_ENDPOINT).then(|| "http://c:4318".to_owned())
        };
        resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        let read = read.into_inner().unwrap();
        let listed: std::collections::BTreeSet<String> =
            ENV_VARS.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(read, listed);
        assert_eq!(listed.len(), ENV_VARS.len(), "duplicates in ENV_VARS");
    }

    /// Expands `A{,B_,C_}D` into `AD`, `AB_D`, `AC_D` (one brace group).
    fn expand_braces(s: &str) -> Vec<String> {
        match (s.find('{'), s.find('}')) {
            (Some(a), Some(b)) if a < b => s[a + 1..b]
                .split(',')
                .map(|alt| format!("{}{}{}", &s[..a], alt, &s[b + 1..]))
                .collect(),
            _ => vec![s.to_owned()],
        }
    }

    /// The variable table of docs/otlp.md names exactly `ENV_VARS`.
    #[test]
    fn docs_table_lists_every_variable() {
        let doc = include_str!("../../../../docs/otlp.md");
        let start = doc
            .find("<!-- otlp-env-table -->")
            .expect("docs/otlp.md: the env table marker");
        let mut documented = std::collections::BTreeSet::new();
        for line in doc[start..].lines().skip(1) {
            if line.trim().is_empty() {
                if documented.is_empty() {
                    continue;
                }
                break;
            }
            let Some(first) = line.split('|').nth(1) else {
                continue;
            };
            for name in first.split('`').skip(1).step_by(2) {
                for n in expand_braces(name) {
                    assert!(documented.insert(n.clone()), "{n} is documented twice");
                }
            }
        }
        let listed: std::collections::BTreeSet<String> =
            ENV_VARS.iter().map(|s| (*s).to_owned()).collect();
        let missing: Vec<_> = listed.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&listed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "docs/otlp.md table: missing {missing:?}, not read by egret {extra:?}"
        );
    }

    #[test]
    fn protocol_compression_and_timeout_layering() {
        let env = env_of(&[
            (ENV_ENDPOINT, "collector:4317"),
            (ENV_PROTOCOL, "grpc"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/json"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://logs:4318/custom",
            ),
            (ENV_COMPRESSION, "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            (ENV_TIMEOUT, "3000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "4000"),
            (ENV_INSECURE, "true"),
        ]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        let t = s.traces.as_ref().unwrap();
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(
            t.url.to_string(),
            "http://collector:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        assert_eq!(t.compression, Compression::Gzip);
        assert_eq!(t.timeout, Duration::from_secs(3));
        let l = s.logs.as_ref().unwrap();
        assert_eq!(l.protocol, Protocol::HttpJson);
        assert_eq!(l.url.to_string(), "http://logs:4318/custom");
        assert_eq!(l.compression, Compression::None);
        let m = s.metrics.as_ref().unwrap();
        assert_eq!(m.timeout, Duration::from_secs(4));
        assert_eq!(
            m.url.path(),
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
        );
        // Without INSECURE a scheme-less gRPC endpoint is TLS.
        let env = env_of(&[(ENV_ENDPOINT, "collector:4317"), (ENV_PROTOCOL, "GRPC")]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        assert_eq!(s.traces.as_ref().unwrap().url.scheme_str(), Some("https"));
        // A gRPC URL's path is not the method's: replaced.
        let cfg = OtlpConfig {
            endpoint: Some("http://c:4317/ignored".into()),
            protocol: Some(Protocol::Grpc),
            compression: Some(Compression::None),
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env_of(&[(ENV_COMPRESSION, "gzip")]))
            .unwrap()
            .unwrap();
        let l = s.logs.as_ref().unwrap();
        assert_eq!(
            l.url.to_string(),
            "http://c:4317/opentelemetry.proto.collector.logs.v1.LogsService/Export"
        );
        assert_eq!(l.compression, Compression::None, "config wins");
        // INSECURE is the environment endpoint's: not for a gateway's.
        let cfg = OtlpConfig {
            endpoint: Some("c:4317".into()),
            protocol: Some(Protocol::Grpc),
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env_of(&[(ENV_INSECURE, "true")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.traces.as_ref().unwrap().url.scheme_str(), Some("https"));
        // Unknown values: warnings and the defaults.
        let env = env_of(&[
            (ENV_ENDPOINT, "http://c"),
            (ENV_PROTOCOL, "thrift"),
            (ENV_COMPRESSION, "zstd"),
            (ENV_INSECURE, "yes"),
            (ENV_SDK_DISABLED, "maybe"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            (ENV_TEMPORALITY, "sometimes"),
        ]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        let t = s.traces.as_ref().unwrap();
        assert_eq!(
            (t.protocol, t.compression),
            (Protocol::HttpProtobuf, Compression::Gzip)
        );
        let w = s.warnings.join("\n");
        for name in [
            ENV_PROTOCOL,
            ENV_COMPRESSION,
            ENV_INSECURE,
            ENV_SDK_DISABLED,
            "OTEL_TRACES_EXPORTER",
            ENV_TEMPORALITY,
        ] {
            assert!(w.contains(name), "no warning naming {name}: {w}");
        }
        assert_eq!(s.temporality, Temporality::Cumulative);
        let s = resolve(
            "g",
            &OtlpConfig::default(),
            &env_of(&[(ENV_ENDPOINT, "http://c"), (ENV_TEMPORALITY, "Delta")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.temporality, Temporality::Delta);
    }

    #[test]
    fn batch_variables_per_signal() {
        let env = env_of(&[
            (ENV_ENDPOINT, "http://c"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "9000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
            ("OTEL_BLRP_MAX_QUEUE_SIZE", "-1"),
            ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "7"),
        ]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        let t = s.traces.as_ref().unwrap();
        assert_eq!(t.queue_capacity, 100);
        assert_eq!(t.batch.schedule_delay, Some(Duration::from_millis(250)));
        assert_eq!(t.batch.export_timeout, Some(Duration::from_secs(9)));
        assert_eq!(t.batch.max_batch, Some(100), "cut to the queue");
        let l = s.logs.as_ref().unwrap();
        assert_eq!(l.queue_capacity, DEFAULT_QUEUE_CAPACITY);
        assert_eq!(l.batch.max_batch, Some(7));
        assert_eq!(l.batch.schedule_delay, None);
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        // queueCapacity wins.
        let cfg = OtlpConfig {
            queue_capacity: Some(3),
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env).unwrap().unwrap();
        assert_eq!(s.traces.as_ref().unwrap().queue_capacity, 3);
    }

    #[test]
    fn tls_files_follow_the_endpoint() {
        let env = env_of(&[
            (ENV_ENDPOINT, "https://c"),
            (ENV_CERTIFICATE, "/etc/ca.pem"),
            ("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", "/etc/logs-ca.pem"),
            (ENV_CLIENT_CERTIFICATE, "/etc/c.pem"),
            (ENV_CLIENT_KEY, "/etc/k.pem"),
        ]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        let t = &s.traces.as_ref().unwrap().tls;
        assert_eq!(t.ca.as_ref().unwrap().path, PathBuf::from("/etc/ca.pem"));
        assert_eq!(t.client_key.as_ref().unwrap().source, ENV_CLIENT_KEY);
        let l = &s.logs.as_ref().unwrap().tls;
        assert_eq!(
            l.ca.as_ref().unwrap().source,
            "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE"
        );
        // A gateway endpoint takes the gateway's files only.
        let cfg = OtlpConfig {
            endpoint: Some("https://mine".into()),
            certificate: Some("/mine/ca.pem".into()),
            ..Default::default()
        };
        let s = resolve("g", &cfg, &env).unwrap().unwrap();
        let t = &s.traces.as_ref().unwrap().tls;
        assert_eq!(t.ca.as_ref().unwrap().source, "otlp.certificate");
        assert!(t.client_cert.is_none());
        // Half of mTLS is an error naming what is set.
        let err = resolve(
            "g",
            &OtlpConfig::default(),
            &env_of(&[(ENV_ENDPOINT, "https://c"), (ENV_CLIENT_KEY, "/k.pem")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains(ENV_CLIENT_KEY), "{err}");
        let cfg = OtlpConfig {
            endpoint: Some("https://mine".into()),
            client_certificate: Some("/c.pem".into()),
            ..Default::default()
        };
        let err = resolve("g", &cfg, &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("otlp.clientKey"), "{err}");
    }

    #[test]
    fn switched_off_signals_are_listed() {
        let env = env_of(&[
            (ENV_ENDPOINT, "http://c"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_LOGS_EXPORTER", "none,otlp"),
        ]);
        let s = resolve("g", &OtlpConfig::default(), &env).unwrap().unwrap();
        assert_eq!(s.switched_off, vec![Signal::Metrics]);
        assert!(s.logs.is_some());
    }

    #[test]
    fn dev_tee_settings() {
        let s = dev_tee("http://127.0.0.1:14318", &[], &env_of(&[])).unwrap();
        assert!(s.tee);
        assert_eq!(url(&s.metrics), "http://127.0.0.1:14318/v1/metrics");
        assert!(!s.resource.contains_key(sc::GATEWAY_NAME));
        assert_eq!(s.sampling, 1.0);
    }
}
