//! `gateways[].otlp`: one gateway's OTLP/HTTP export, as configured.
//!
//! How it combines with the standard `OTEL_*` environment variables into
//! what an exporter does is the OTLP sink's business
//! (`sink::otlp::settings::resolve`); see `docs/otlp.md`.
use std::{collections::BTreeMap, time::Duration};

use schemars::JsonSchema;
use serde::Deserialize;

use super::duration;

/// One gateway's OTLP export (`gateways[].otlp`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OtlpConfig {
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
    /// Per-request timeout (e.g. `10s`); default `OTEL_EXPORTER_OTLP_TIMEOUT`
    /// (milliseconds) or 10s.
    #[serde(deserialize_with = "duration::de_opt")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// Records waiting per signal; when full, new ones are dropped and counted.
    pub queue_capacity: usize,
    /// How often cumulative metrics are exported (e.g. `60s`).
    #[serde(deserialize_with = "duration::de")]
    #[schemars(with = "String")]
    pub metrics_interval: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: None,
            headers: BTreeMap::new(),
            signals: SignalsConfig::default(),
            sampling: 1.0,
            conventions: vec![],
            emit_gen_ai_system: false,
            emit_legacy_cache_creation: true,
            timeout: None,
            queue_capacity: 10_000,
            metrics_interval: Duration::from_secs(60),
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
             metricsInterval: 1m\n",
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
        assert_eq!(cfg.queue_capacity, 5);
        assert_eq!(cfg.metrics_interval, Duration::from_secs(60));
        let d: OtlpConfig = serde_norway::from_str("{}").unwrap();
        assert_eq!(d, OtlpConfig::default());
        assert!(!d.emit_gen_ai_system, "gen_ai.system is off by default");
        assert!(
            d.emit_legacy_cache_creation,
            "the old cache name is on by default"
        );
        assert!(serde_norway::from_str::<OtlpConfig>("bogus: 1").is_err());
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
