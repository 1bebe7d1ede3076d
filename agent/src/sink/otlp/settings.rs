//! The resolution of a gateway's `otlp` section ([`OtlpConfig`]), with the
//! standard `OTEL_*` environment variables, into what one exporter does.
//!
//! [`resolve`] is pure: the environment comes in as a lookup closure, so
//! every rule below is unit-tested without touching the process env.
//!
//! Endpoint rules, per signal (`traces`, `logs`, `metrics`):
//! 1. the gateway's `endpoint` (a base URL, `${ENV}` expanded) + `/v1/<signal>`;
//!    the environment's endpoints and headers are then ignored, so a
//!    credential from `OTEL_EXPORTER_OTLP_HEADERS` never goes to an endpoint
//!    it was not set for;
//! 2. else `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`, a full URL used as is;
//! 3. else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/<signal>`;
//! 4. else the signal is off for that gateway.
//!
//! Headers: the gateway's `headers` (`${ENV}` expanded) win over
//! `OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS`, which win over
//! `OTEL_EXPORTER_OTLP_HEADERS` (both `k=v,k2=v2`, values URL-decoded; only
//! used with an endpoint from the environment).
use std::{collections::BTreeMap, time::Duration};

use http::{
    header::{HeaderName, InvalidHeaderName, InvalidHeaderValue},
    uri::InvalidUri,
    HeaderMap, HeaderValue,
};

use crate::{
    config::{expand_env, Convention, ExpandError, OtlpConfig},
    record::AttrValue,
    semconv as sc,
};

pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const ENV_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const ENV_K8S_NODE_NAME: &str = "K8S_NODE_NAME";
pub const ENV_NODE_NAME: &str = "NODE_NAME";
/// Header MLflow needs on `/v1/traces` (422 without it).
pub const MLFLOW_EXPERIMENT_HEADER: &str = "x-mlflow-experiment-id";
/// Experiment used when the `mlflow` profile is on and the header is not set.
pub const MLFLOW_DEFAULT_EXPERIMENT: &str = "0";
/// `service.name` when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "egret";
/// Per-request timeout when neither the config nor `OTEL_EXPORTER_OTLP_TIMEOUT` sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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
    fn env_endpoint(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Signal::Logs => "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        }
    }
    fn env_headers(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            Signal::Logs => "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        }
    }
    fn env_exporter(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_TRACES_EXPORTER",
            Signal::Logs => "OTEL_LOGS_EXPORTER",
            Signal::Metrics => "OTEL_METRICS_EXPORTER",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one signal goes.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalTarget {
    /// Full URL (`…/v1/traces` etc.), validated `http`/`https` with a host.
    pub url: http::Uri,
    /// Headers sent with every request (besides content type/encoding).
    pub headers: HeaderMap,
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
        }
    }
    /// The conventions of a gateway's `otlp` section.
    pub fn from_config(cfg: &OtlpConfig) -> Conventions {
        Conventions {
            gen_ai_system: cfg.emit_gen_ai_system,
            legacy_cache_creation: cfg.emit_legacy_cache_creation,
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
    pub timeout: Duration,
    pub queue_capacity: usize,
    pub metrics_interval: Duration,
    /// Resource attributes (besides `host.name`, filled in at start when absent,
    /// and, for the dev tee, the per-record gateway).
    pub resource: BTreeMap<String, AttrValue>,
    /// The dev tee: records of every gateway, grouped by gateway in the
    /// resource (`egret.gateway.name`), metrics split by that attribute.
    pub tee: bool,
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

fn is_none_value(v: &str) -> bool {
    let mut any = false;
    for part in v.split(',') {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        if !p.eq_ignore_ascii_case("none") {
            return false;
        }
        any = true;
    }
    any
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Resolves one gateway's effective export settings. `Ok(None)` means no
/// signal has an endpoint (or all are switched off): nothing to start.
pub fn resolve(
    gateway: &str,
    cfg: &OtlpConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ExportSettings>, SettingsError> {
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
    if cfg.queue_capacity == 0 {
        return Err(invalid("queueCapacity", "must be at least 1".into()));
    }
    if cfg.metrics_interval < Duration::from_millis(100) {
        return Err(invalid("metricsInterval", "must be at least 100ms".into()));
    }
    if cfg.timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid("timeout", "must not be 0".into()));
    }
    let mut warnings = Vec::new();
    let sdk_disabled =
        non_empty(env(ENV_SDK_DISABLED)).is_some_and(|v| v.eq_ignore_ascii_case("true"));

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
    let cfg_endpoint = match cfg.endpoint.as_deref().map(str::trim) {
        Some(e) if !e.is_empty() => {
            Some(expand_env(e, env).map_err(|err| expand_err("endpoint".into(), err))?)
        }
        _ => None,
    };
    let env_headers = |name: &str, warnings: &mut Vec<String>| -> Vec<(String, String)> {
        match non_empty(env(name)) {
            Some(v) => {
                let (kv, bad) = parse_kv_list(&v);
                for b in bad {
                    warnings.push(format!("{name}: ignoring malformed entry {b:?}"));
                }
                kv
            }
            None => vec![],
        }
    };
    let generic_env_headers = env_headers(ENV_HEADERS, &mut warnings);
    let conventions = Conventions::from_config(cfg);

    let timeout = match cfg.timeout {
        Some(t) => t,
        None => match non_empty(env(ENV_TIMEOUT)) {
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    warnings.push(format!(
                        "{ENV_TIMEOUT}: ignoring {v:?} (milliseconds expected)"
                    ));
                    DEFAULT_TIMEOUT
                }
            },
            None => DEFAULT_TIMEOUT,
        },
    };

    let mut settings = ExportSettings {
        name: gateway.to_owned(),
        traces: None,
        logs: None,
        metrics: None,
        sampling: cfg.sampling,
        conventions,
        timeout,
        queue_capacity: cfg.queue_capacity,
        metrics_interval: cfg.metrics_interval,
        resource: BTreeMap::new(),
        tee: false,
        warnings: vec![],
    };
    for signal in Signal::ALL {
        let enabled_in_cfg = match signal {
            Signal::Traces => cfg.signals.traces,
            Signal::Logs => cfg.signals.logs,
            Signal::Metrics => cfg.signals.metrics,
        };
        let disabled_by_env = sdk_disabled
            || non_empty(env(signal.env_exporter())).is_some_and(|v| is_none_value(&v));
        if !enabled_in_cfg || disabled_by_env {
            continue;
        }
        let (url, source_name, mut headers) = if let Some(base) = &cfg_endpoint {
            (join_base(base, signal), "otlp.endpoint", vec![])
        } else if let Some(url) = non_empty(env(signal.env_endpoint())) {
            let mut h = generic_env_headers.clone();
            h.extend(env_headers(signal.env_headers(), &mut warnings));
            (url, signal.env_endpoint(), h)
        } else if let Some(base) = non_empty(env(ENV_ENDPOINT)) {
            let mut h = generic_env_headers.clone();
            h.extend(env_headers(signal.env_headers(), &mut warnings));
            (join_base(&base, signal), ENV_ENDPOINT, h)
        } else {
            continue;
        };
        headers.extend(cfg_headers.iter().cloned());
        let uri = parse_url(&url).map_err(|source| SettingsError::Endpoint {
            gateway: gateway.to_owned(),
            url: url.clone(),
            source_name: source_name.to_owned(),
            source,
        })?;
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
        });
    }
    if !settings.any() {
        return Ok(None);
    }
    settings.resource = resource_from_env(env, &mut warnings);
    settings
        .resource
        .insert(sc::GATEWAY_NAME.to_owned(), AttrValue::from(gateway));
    if conventions.openinference {
        settings.resource.insert(
            sc::OPENINFERENCE_PROJECT_NAME.to_owned(),
            AttrValue::from(gateway),
        );
    }
    settings.warnings = warnings;
    Ok(Some(settings))
}

/// Settings of the dev tee: every signal of every gateway to `base_url`
/// (+ `/v1/<signal>`), nothing sampled away. The standard signal switches
/// (`OTEL_*_EXPORTER=none`) and resource variables still apply.
pub fn dev_tee(
    base_url: &str,
    conventions: &[Convention],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ExportSettings, SettingsError> {
    let cfg = OtlpConfig {
        endpoint: Some(base_url.to_owned()),
        conventions: conventions.to_vec(),
        metrics_interval: Duration::from_secs(10),
        ..OtlpConfig::default()
    };
    let mut s = resolve("dev-tee", &cfg, env)?.ok_or_else(|| SettingsError::Invalid {
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
        assert!(resolve("g", &OtlpConfig::default(), &env)
            .unwrap()
            .is_none());
        let env = env_of(&[(ENV_ENDPOINT, "http://c:4318"), (ENV_SDK_DISABLED, "true")]);
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
                queue_capacity: 0,
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
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        let s = resolve("g", &base, &env_of(&[(ENV_TIMEOUT, "2500")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.timeout, Duration::from_millis(2500));
        let cfg = OtlpConfig {
            timeout: Some(Duration::from_secs(1)),
            ..base
        };
        let s = resolve("g", &cfg, &env_of(&[(ENV_TIMEOUT, "2500")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(1));
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
