//! OTLP export (HTTP/protobuf, HTTP/JSON, gRPC) of flow and transaction
//! records: traces, logs, metrics.
//!
//! Best effort by design: records always reach the local spool and
//! ClickHouse first; this sink never blocks the capture path. Each gateway
//! with an effective endpoint gets one [`OtlpExporter`]; the optional dev
//! tee gets every record of every gateway. [`OtlpSinks`] holds them all.
//!
//! - [`settings`]: a gateway's `otlp` section (`config::OtlpConfig`)
//!   resolved with the standard `OTEL_*` variables (pure, see
//!   [`settings::resolve`]); [`sinks_from_env`] starts them all.
//! - [`encode`]: records → spans and log records, ids, sampling,
//!   convention profiles (OpenInference, MLflow).
//! - [`metrics`]: cumulative in-memory aggregation with bounded cardinality.
//! - [`transport`]: the three protocols, TLS (CA, mTLS), retry, backoff,
//!   `Retry-After` and gRPC `RetryInfo`.
//! - [`export`]: per-signal bounded queues, batching, status.
//!
//! Semantic conventions: OpenTelemetry semantic conventions **v1.41.1**
//! (`gen_ai.provider.name`, `gen_ai.client.token.usage`,
//! `gen_ai.client.operation.duration` and their bucket boundaries); the
//! schema URL on every scope is `https://opentelemetry.io/schemas/1.41.1`.
//! All `gen_ai.*` names are at Development stability upstream. egret's own
//! names are described in its registry, `docs/semconv/`.
//!
//! User documentation: `docs/otlp.md`.
pub mod encode;
pub mod export;
pub mod metrics;
pub mod settings;
pub mod transport;

pub use export::{ExportOptions, ExporterStatus, OtlpExporter, OtlpSinks, SignalStatus};
pub use settings::{dev_tee, resolve, ExportSettings, SettingsError, Signal, ENV_VARS};
pub use transport::{HttpClient, LinkState, RetryPolicy};

use crate::config::Config;

/// Why OTLP export could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("OTLP exporters need a tokio runtime")]
    NoRuntime,
    #[error("OTLP TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    #[error("OTLP exporter {exporter:?}, {signal}: {source}")]
    TlsSetup {
        exporter: String,
        signal: Signal,
        #[source]
        source: Box<transport::TlsSetupError>,
    },
}

/// The node's exporters for `cfg`, resolved against the process
/// environment (`OTEL_*`), with the dev tee at `dev_tee` when given; what
/// the environment had that was ignored is logged. Used at start and on
/// every reload.
pub fn sinks_from_env(cfg: &Config, dev_tee: Option<&str>) -> Result<OtlpSinks, OtlpError> {
    let env = |k: &str| std::env::var(k).ok();
    let opts = ExportOptions {
        max_series: cfg.node.metrics.max_series,
        ..ExportOptions::default()
    };
    let (sinks, warnings) = OtlpSinks::from_config(cfg, dev_tee, &env, opts)?;
    for w in warnings {
        tracing::warn!("otlp: {w}");
    }
    Ok(sinks)
}
