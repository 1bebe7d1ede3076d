//! `gateways[].otlp` and `gateways[].exporters[]`: a gateway's OTLP
//! exporters, as configured.
//!
//! How it combines with the standard `OTEL_*` environment variables into
//! what an exporter does is the OTLP sink's business
//! (`sink::otlp::settings::resolve`); see `docs/otlp.md`.
use std::{collections::BTreeMap, time::Duration};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{duration, ContentMode};

/// One OTLP exporter of a gateway: its primary one (`gateways[].otlp`) or
/// one more (`gateways[].exporters[]`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OtlpConfig {
    /// The exporter's name, unique within its gateway; required in
    /// `exporters[]`. It is shown as `<gateway>/<name>` in `/status` and
    /// metrics (the primary exporter is shown as `<gateway>`).
    pub name: Option<String>,
    /// How much of what the sandbox sent and received this exporter
    /// carries: `full` (default), `metadata` or `none`; see `docs/otlp.md`.
    pub content: ContentMode,
    /// `service.name` of this exporter's resource (over `OTEL_SERVICE_NAME`
    /// and the default `egret`).
    pub service_name: Option<String>,
    /// More resource attributes (over `OTEL_RESOURCE_ATTRIBUTES`);
    /// `${ENV}` expanded.
    pub resource_attributes: BTreeMap<String, String>,
    /// Base URL (`http://` or `https://`, `${ENV}` expanded); egret appends
    /// `/v1/traces`, `/v1/logs` and `/v1/metrics`. Unset: the standard
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables, else no export.
    pub endpoint: Option<String>,
    /// Extra request headers; values support `${ENV}` (and `$$` for a `$`).
    pub headers: BTreeMap<String, String>,
    /// Which signals are sent.
    pub signals: SignalsConfig,
    /// Fraction of invocations whose spans and logs are sent (0.0–1.0),
    /// decided per `invocation.id`. Metrics always count everything.
    pub sampling: f64,
    /// Attribute profiles added to spans on top of the GenAI semantic
    /// conventions (always on): `openinference`, `mlflow`.
    pub conventions: Vec<Convention>,
    /// Also send the deprecated `gen_ai.system` (same value as
    /// `gen_ai.provider.name`) on spans and logs, for dashboards built on
    /// semantic conventions before v1.37.0. Off by default.
    pub emit_gen_ai_system: bool,
    /// Also send `gen_ai.usage.cache_creation.input_tokens` (the name of
    /// `gen_ai.usage.cache_write.input_tokens` before
    /// semantic-conventions-genai v0.1.0) while consumers move. On by
    /// default; records always keep both.
    pub emit_legacy_cache_creation: bool,
    /// Send the conversation as the GenAI conventions' opt-in content
    /// attributes (`gen_ai.input.messages`, `gen_ai.output.messages`,
    /// `gen_ai.system_instructions`, `gen_ai.tool.definitions`), assembled
    /// from the captured bodies, streams included. Needs `content: full`.
    /// Off by default (the conventions make them opt-in).
    pub messages: bool,
    /// Per-request timeout (e.g. `10s`); default `OTEL_EXPORTER_OTLP_TIMEOUT`
    /// (milliseconds) or 10s.
    #[serde(deserialize_with = "duration::de_opt")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// Records waiting per signal; when full, new ones are dropped and
    /// counted. Default `OTEL_BSP_MAX_QUEUE_SIZE` (traces) /
    /// `OTEL_BLRP_MAX_QUEUE_SIZE` (logs), else 10000.
    pub queue_capacity: Option<usize>,
    /// How often cumulative metrics are exported (e.g. `60s`); default
    /// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), else 60s.
    #[serde(deserialize_with = "duration::de_opt")]
    #[schemars(with = "Option<String>")]
    pub metrics_interval: Option<Duration>,
    /// Wire protocol: `http/protobuf` (default), `http/json` or `grpc`.
    /// Unset: `OTEL_EXPORTER_OTLP_[<SIGNAL>_]PROTOCOL` for endpoints from the
    /// environment, else `http/protobuf`.
    pub protocol: Option<Protocol>,
    /// Request compression: `gzip` (default) or `none`. Unset:
    /// `OTEL_EXPORTER_OTLP_[<SIGNAL>_]COMPRESSION`, else `gzip`.
    pub compression: Option<Compression>,
    /// PEM file of the CA certificate(s) that verify the endpoint (instead of
    /// the system roots). `${ENV}` expanded.
    pub certificate: Option<String>,
    /// PEM client certificate (chain) for mTLS; needs `clientKey`.
    pub client_certificate: Option<String>,
    /// PEM private key of `clientCertificate`.
    pub client_key: Option<String>,
}

/// The OTLP wire protocol of an exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
pub enum Protocol {
    /// OTLP/HTTP, binary protobuf bodies (`/v1/<signal>`, port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/HTTP, JSON bodies (the OTLP/JSON mapping).
    #[serde(rename = "http/json")]
    HttpJson,
    /// OTLP/gRPC (unary `Export` calls over HTTP/2, port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

impl Protocol {
    /// The standard name (`OTEL_EXPORTER_OTLP_PROTOCOL` value).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
            Protocol::Grpc => "grpc",
        }
    }
    /// Parses a standard name (case-insensitive).
    pub fn parse(s: &str) -> Option<Protocol> {
        [Protocol::HttpProtobuf, Protocol::HttpJson, Protocol::Grpc]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

impl Compression {
    /// Parses `gzip` / `none` (case-insensitive).
    pub fn parse(s: &str) -> Option<Compression> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gzip" => Some(Compression::Gzip),
            "none" => Some(Compression::None),
            _ => None,
        }
    }
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            name: None,
            content: ContentMode::Full,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            endpoint: None,
            headers: BTreeMap::new(),
            signals: SignalsConfig::default(),
            sampling: 1.0,
            conventions: vec![],
            emit_gen_ai_system: false,
            emit_legacy_cache_creation: true,
            messages: false,
            timeout: None,
            queue_capacity: None,
            metrics_interval: None,
            protocol: None,
            compression: None,
            certificate: None,
            client_certificate: None,
            client_key: None,
        }
    }
}

/// Per-signal switches (all on by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SignalsConfig {
    pub traces: bool,
    pub logs: bool,
    pub metrics: bool,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        SignalsConfig {
            traces: true,
            logs: true,
            metrics: true,
        }
    }
}

/// An attribute profile for span consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
pub enum Convention {
    /// OpenTelemetry GenAI semantic conventions (always on; listing it is a no-op).
    #[serde(rename = "genai")]
    GenAi,
    /// OpenInference (Arize Phoenix): `openinference.span.kind`, `llm.*`,
    /// `input.value`/`output.value`, `session.id`.
    #[serde(rename = "openinference")]
    OpenInference,
    /// MLflow tracing: `mlflow.spanInputs`/`mlflow.spanOutputs`/`mlflow.spanType`,
    /// `session.id`, and the `x-mlflow-experiment-id` header.
    #[serde(rename = "mlflow")]
    Mlflow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_camel_case_with_defaults() {
        let cfg: OtlpConfig = serde_norway::from_str(
            "endpoint: http://c:4318\nheaders: {a: b}\nsignals: {logs: false}\nsampling: 0.5\n\
             conventions: [openinference, mlflow]\nemitGenAiSystem: true\ntimeout: 3s\nqueueCapacity: 5\n\
             metricsInterval: 1m\nprotocol: grpc\ncompression: none\ncertificate: /ca.pem\n\
             clientCertificate: /c.pem\nclientKey: /k.pem\n",
        )
        .unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://c:4318"));
        assert!(cfg.signals.traces && !cfg.signals.logs && cfg.signals.metrics);
        assert_eq!(cfg.sampling, 0.5);
        assert_eq!(
            cfg.conventions,
            vec![Convention::OpenInference, Convention::Mlflow]
        );
        assert!(cfg.emit_gen_ai_system);
        assert_eq!(cfg.timeout, Some(Duration::from_secs(3)));
        assert_eq!(cfg.queue_capacity, Some(5));
        assert_eq!(cfg.metrics_interval, Some(Duration::from_secs(60)));
        assert_eq!(cfg.protocol, Some(Protocol::Grpc));
        assert_eq!(cfg.compression, Some(Compression::None));
        assert_eq!(cfg.certificate.as_deref(), Some("/ca.pem"));
        assert_eq!(cfg.client_certificate.as_deref(), Some("/c.pem"));
        assert_eq!(cfg.client_key.as_deref(), Some("/k.pem"));
        let json: OtlpConfig = serde_norway::from_str("protocol: http/json").unwrap();
        assert_eq!(json.protocol, Some(Protocol::HttpJson));
        assert!(serde_norway::from_str::<OtlpConfig>("protocol: thrift").is_err());
        assert!(serde_norway::from_str::<OtlpConfig>("compression: zstd").is_err());
        let d: OtlpConfig = serde_norway::from_str("{}").unwrap();
        assert_eq!(d, OtlpConfig::default());
        assert!(!d.emit_gen_ai_system, "gen_ai.system is off by default");
        assert!(
            d.emit_legacy_cache_creation,
            "the old cache name is on by default"
        );
        assert!(!d.messages, "structured content is opt-in");
        assert!(
            serde_norway::from_str::<OtlpConfig>("messages: true")
                .unwrap()
                .messages
        );
        assert!(serde_norway::from_str::<OtlpConfig>("bogus: 1").is_err());
        assert_eq!(d.content, ContentMode::Full, "full content by default");
        let named: OtlpConfig = serde_norway::from_str(
            "name: tenant\ncontent: none\nserviceName: svc\nresourceAttributes: {team: a}\n",
        )
        .unwrap();
        assert_eq!(named.name.as_deref(), Some("tenant"));
        assert_eq!(named.content, ContentMode::None);
        assert_eq!(named.service_name.as_deref(), Some("svc"));
        assert_eq!(named.resource_attributes["team"], "a");
        assert!(serde_norway::from_str::<OtlpConfig>("content: some").is_err());
        assert!(serde_norway::from_str::<OtlpConfig>("conventions: [zipkin]").is_err());
        assert!(serde_norway::from_str::<OtlpConfig>("metricsInterval: soon").is_err());
    }

    #[test]
    fn json_schema_names_camel_case_keys() {
        let schema = serde_json::to_string(&schemars::schema_for!(OtlpConfig)).unwrap();
        for key in [
            "endpoint",
            "headers",
            "signals",
            "sampling",
            "conventions",
            "emitGenAiSystem",
            "timeout",
            "queueCapacity",
            "metricsInterval",
            "protocol",
            "compression",
            "certificate",
            "clientCertificate",
            "clientKey",
            "name",
            "content",
            "serviceName",
            "resourceAttributes",
            "metadata",
            "http/json",
            "grpc",
            "openinference",
            "mlflow",
        ] {
            assert!(
                schema.contains(&format!("\"{key}\"")),
                "{key} missing: {schema}"
            );
        }
    }
}
