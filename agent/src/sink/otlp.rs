//! OTLP/HTTP export of flow and transaction records: traces, logs, metrics.
//!
//! Best effort by design: records always reach the local spool and
//! ClickHouse first; this sink never blocks the capture path. Each gateway
//! with an effective endpoint gets one [`OtlpExporter`]; the optional dev
//! tee gets every record of every gateway. [`OtlpSinks`] holds them all.
//!
//! - [`settings`]: the `otlp` config section and its resolution with the
//!   standard `OTEL_*` variables (pure, see [`settings::resolve`]).
//! - [`encode`]: records → spans and log records, ids, sampling,
//!   convention profiles (OpenInference, MLflow).
//! - [`metrics`]: cumulative in-memory aggregation with bounded cardinality.
//! - [`transport`]: gzip'd protobuf POSTs with retry, backoff, `Retry-After`.
//! - [`export`]: per-signal bounded queues, batching, status.
//!
//! Semantic conventions: OpenTelemetry GenAI semantic conventions
//! **v1.37.0** (`gen_ai.provider.name`, `gen_ai.client.token.usage`,
//! `gen_ai.client.operation.duration` and their bucket boundaries); the
//! schema URL on every scope is `https://opentelemetry.io/schemas/1.37.0`.
//! All `gen_ai.*` names are at Development stability upstream.
//!
//! User documentation: `docs/otlp.md`.
pub mod encode;
pub mod export;
pub mod metrics;
pub mod settings;
pub mod transport;

pub use export::{ExportOptions, ExporterStatus, OtlpExporter, OtlpSinks, SignalStatus};
pub use settings::{
    dev_tee, resolve, Convention, ExportSettings, OtlpConfig, SettingsError, Signal, SignalsConfig,
};
pub use transport::{HttpClient, LinkState, RetryPolicy};

/// Why OTLP export could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("OTLP exporters need a tokio runtime")]
    NoRuntime,
    #[error("OTLP TLS setup: {0}")]
    Tls(String),
}
