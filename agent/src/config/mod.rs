//! The one typed configuration, parsed once.
//!
//! YAML, camelCase keys, unknown keys rejected with line and column. Every
//! field has a default so `egret run` with no file runs the embedded default
//! (see [`Config::embedded_default`]).
//!
//! Every deserialized type lives here, one submodule per section; the
//! components take what they need from it. This module imports nothing of
//! the crate but `net`, `providers` and `semconv` (the content lists).
//!
//! - `node`: `node` (listeners, kernel refusals, limits, PROXY protocol);
//! - `gateway`: `gateways[]` (selector, routes, budgets, body capture);
//! - `otlp`: `gateways[].otlp`;
//! - `store`: `store` and `store.spool`;
//! - `clickhouse`: `store.clickhouse`;
//! - `redaction`: `redaction` (secret shapes, patterns, JSON pointers);
//! - `content`: the content mode of OTLP exporters, the spool and ClickHouse;
//! - `expand`: the `${NAME}` grammar of credentials and endpoints;
//! - `validate`: the rules checked after parsing;
//! - `duration`: humantime durations.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::net::Cidr;

mod clickhouse;
mod content;
mod duration;
mod expand;
mod gateway;
mod node;
mod otlp;
mod pricing;
mod redaction;
mod store;
mod validate;

pub use clickhouse::ClickHouseConfig;
pub use content::ContentMode;
pub use expand::{expand_env, expand_process_env, ExpandError};
pub use gateway::{
    BudgetConfig, CaptureBodyConfig, DefaultPolicy, GatewayConfig, NonHttpPolicy, RouteConfig,
    Selector,
};
pub use node::{
    LimitsConfig, McpConfig, MetricsConfig, NodeConfig, ProxyProtocolConfig, DEFAULT_MAX_SERIES,
};
pub use otlp::{Compression, Convention, OtlpConfig, Protocol, SignalsConfig};
pub use pricing::{LongContextPrice, ModelPrice, PricingConfig, Rates};
pub use redaction::{
    compile as compile_redaction, parse_pointer, Builtin, PatternRule, PointerToken,
    RedactionConfig, RedactionError, REGEX_SIZE_LIMIT as REDACTION_REGEX_SIZE_LIMIT,
};
pub use store::{SpoolConfig, StoreConfig};
pub use validate::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: ValidationError,
    },
}

/// Keys left out of a file take their values from the embedded default
/// (including its gateways: `gateways: []` is how to have none).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub node: NodeConfig,
    pub store: StoreConfig,
    pub gateways: Vec<GatewayConfig>,
    /// The price table behind `egret.cost.usd` (`docs/cost.md`).
    pub pricing: PricingConfig,
    /// What is cut out of bodies before records are stored or exported
    /// (`docs/redaction.md`).
    pub redaction: RedactionConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config::embedded_default()
    }
}

impl Config {
    /// What `egret run` uses without `--config`: sandbox root `egret.slice`,
    /// ports 80/443, the well-known LLM provider hosts allowed, everything
    /// else denied.
    pub fn embedded_default() -> Config {
        // One route per provider egret parses, for its public API hosts.
        let routes = crate::providers::KNOWN
            .iter()
            .map(|k| RouteConfig {
                name: k.name.to_owned(),
                hosts: k.hosts.iter().map(|h| (*h).to_owned()).collect(),
                provider: k.name.to_owned(),
                format: None,
            })
            .collect();
        Config {
            node: NodeConfig::default(),
            store: StoreConfig::default(),
            pricing: PricingConfig::default(),
            redaction: RedactionConfig::default(),
            gateways: vec![GatewayConfig {
                name: "default".to_owned(),
                selector: Selector::default(),
                default_policy: DefaultPolicy::DenyAll,
                routes,
                budgets: vec![],
                capture_body: CaptureBodyConfig::default(),
                rewrite_stream_usage: true,
                non_http: NonHttpPolicy::Passthrough,
                otlp: OtlpConfig::default(),
                exporters: vec![],
            }],
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates; errors carry line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: match e.location().or_else(|| second_document_start(text)) {
                Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
                None => e.to_string(),
            },
        })?;
        cfg.validate().map_err(|source| ConfigError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        Ok(cfg)
    }
}

/// Where the second YAML document of `text` starts, when there is one and
/// the first alone is a valid config: serde_norway reports "more than one
/// document" without a position (and a document can start without `---`,
/// after a line indented less than the first one).
fn second_document_start(text: &str) -> Option<serde_norway::Location> {
    /// Accepts nothing, so the error carries the position of the node.
    struct Nothing;
    impl<'de> serde::de::Visitor<'de> for Nothing {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a single YAML document")
        }
    }
    let mut docs = serde_norway::Deserializer::from_str(text);
    Config::deserialize(docs.next()?).ok()?;
    let second = docs.next()?;
    serde::Deserializer::deserialize_any(second, Nothing)
        .err()?
        .location()
}

#[cfg(test)]
mod tests {

    /// Every key of the configuration schema is in docs/configuration.md
    /// (as `key`), so a new key cannot ship undocumented.
    #[test]
    fn every_config_key_is_documented() {
        fn keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                        out.extend(props.keys().cloned());
                    }
                    m.values().for_each(|x| keys(x, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
                _ => {}
            }
        }
        let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap();
        let mut all = std::collections::BTreeSet::new();
        keys(&schema, &mut all);
        assert!(all.len() > 50, "{all:?}");
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
        )
        .unwrap();
        let missing: Vec<&String> = all
            .iter()
            .filter(|k| !doc.contains(&format!("`{k}`")))
            .collect();
        assert!(missing.is_empty(), "undocumented config keys: {missing:?}");
    }

    use super::*;

    #[test]
    fn unknown_key_is_rejected_with_position() {
        let err = Config::parse(
            "node:\n  capturePorts: [443]\n  bogus: 1\n",
            Path::new("x.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn defaults_fill_missing_keys() {
        let cfg = Config::parse("node:\n  listenPort: 16000\n", Path::new("x.yaml")).unwrap();
        assert_eq!(cfg.node.listen_port, 16000);
        assert_eq!(cfg.node.capture_ports, vec![80, 443]);
        assert_eq!(cfg.node.sandbox_root, PathBuf::from("egret.slice"));
    }

    #[test]
    fn the_metrics_series_cap_defaults_and_is_at_least_one() {
        let cfg = Config::parse("node: {}\n", Path::new("x.yaml")).unwrap();
        assert_eq!(cfg.node.metrics.max_series, DEFAULT_MAX_SERIES);
        let cfg = Config::parse(
            "node:\n  metrics:\n    maxSeries: 50\n",
            Path::new("x.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.node.metrics.max_series, 50);
        let err = Config::parse("node:\n  metrics:\n    maxSeries: 0\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("maxSeries must be at least 1"), "{err}");
        let err = Config::parse("node:\n  metrics:\n    maxSerie: 5\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn connection_timeouts_parse_and_zero_is_refused() {
        let cfg = Config::parse(
            "node:\n  limits:\n    headerTimeout: 8s\n",
            Path::new("x.yaml"),
        )
        .unwrap();
        assert_eq!(
            cfg.node.limits.header_timeout,
            std::time::Duration::from_secs(8)
        );
        assert_eq!(
            cfg.node.limits.idle_timeout,
            std::time::Duration::from_secs(120)
        );
        for key in ["headerTimeout", "idleTimeout"] {
            let err = Config::parse(
                &format!("node:\n  limits:\n    {key}: 0s\n"),
                Path::new("x.yaml"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&format!("node.limits.{key} must be above 0")),
                "{err}"
            );
        }
    }

    #[test]
    fn proxy_protocol_is_off_by_default_and_validated() {
        let cfg = Config::parse("node: {}\n", Path::new("x.yaml")).unwrap();
        let pp = &cfg.node.proxy_protocol;
        assert!(pp.listen.is_none() && pp.unix_socket.is_none());
        let cfg = Config::parse(
            "node:\n  proxyProtocol:\n    listen: 127.0.0.1:15008\n    unixSocket: /run/egret/pp.sock\n    trustedCidrs: [127.0.0.1/32, 'fd00::/8']\n",
            Path::new("x.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.node.proxy_protocol.cidrs().unwrap().len(), 2);
        // The sandbox ranges are the operator's to name.
        let cfg = Config::parse(
            "node:
  sandboxCidrs: [10.88.0.0/16]
  proxyProtocol:
    listen: 127.0.0.1:15008
    trustedCidrs: [10.0.0.0/16]
",
            Path::new("x.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.node.sandbox_cidrs, ["10.88.0.0/16"]);
        let err = Config::parse(
            "node:
  sandboxCidrs: [10.0.5.0/24]
  proxyProtocol:
    listen: 127.0.0.1:15008
    trustedCidrs: [10.0.0.0/16]
",
            Path::new("x.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("10.0.0.0/16 overlaps node.sandboxCidrs 10.0.5.0/24"),
            "{err}"
        );
        for (bad, why) in [
            ("listen: 127.0.0.1:15008", "trustedCidrs"),
            (
                "listen: 127.0.0.1:15001\n    trustedCidrs: [127.0.0.1]",
                "port",
            ),
            (
                "listen: 127.0.0.1:443\n    trustedCidrs: [127.0.0.1]",
                "capturePorts",
            ),
            ("trustedCidrs: [10.0.0.1/8]", "host bits"),
            // A trusted network that covers sandbox veths (egret exec's
            // 10.231.0.0/16 by default): sandboxes could forge attribution.
            ("trustedCidrs: [10.0.0.0/8]", "overlaps node.sandboxCidrs"),
            (
                "trustedCidrs: [10.231.7.0/24]",
                "overlaps node.sandboxCidrs",
            ),
            ("unixSocket: pp.sock", "absolute"),
            ("bogus: 1", "bogus"),
        ] {
            let err = Config::parse(
                &format!("node:\n  proxyProtocol:\n    {bad}\n"),
                Path::new("x.yaml"),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn exporters_need_unique_names_and_their_own_endpoints() {
        let gw = |extra: &str| format!("gateways:\n- name: g\n{extra}");
        let cfg = Config::parse(
            &gw("  otlp: {endpoint: 'http://op:4318'}\n  exporters:\n  - {name: tenant, endpoint: 'http://t:4318', content: none}\n"),
            Path::new("x.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.gateways[0].exporters[0].content, ContentMode::None);
        for (bad, why) in [
            (
                "  exporters:\n  - {endpoint: 'http://t:4318'}\n",
                "exporters[0].name",
            ),
            (
                "  exporters:\n  - {name: 'a b', endpoint: 'http://t:4318'}\n",
                "exporters[0].name",
            ),
            ("  otlp: {name: ''}\n", "otlp.name"),
            ("  exporters:\n  - {name: t}\n", "needs its own endpoint"),
            (
                "  otlp: {name: t}\n  exporters:\n  - {name: t, endpoint: 'http://t:4318'}\n",
                "duplicate exporter name \"t\"",
            ),
        ] {
            let err = Config::parse(&gw(bad), Path::new("x.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn more_than_one_document_is_rejected_with_position() {
        // Found by the `config` fuzz target: a less indented line starts a
        // second document, reported by serde_norway without a position.
        let err = Config::parse(" node:\ne", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2, column 1"), "{err}");
        assert!(err.contains("more than one document"), "{err}");
        let err = Config::parse("node: {}\n---\ngateways: []\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3, column 1"), "{err}");
    }

    #[test]
    fn listen_port_cannot_be_captured() {
        let err = Config::parse("node:\n  listenPort: 443\n", Path::new("x.yaml")).unwrap_err();
        assert!(err.to_string().contains("listenPort"));
    }
}
