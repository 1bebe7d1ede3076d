//! `store.clickhouse`: where and how records are inserted into ClickHouse.
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{duration, ContentMode};

/// ClickHouse sink configuration (embedded in the agent config as `clickhouse`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClickHouseConfig {
    /// HTTP(S) endpoint, e.g. `http://clickhouse:8123`.
    pub url: String,
    /// Database holding the `transactions` and `flows` tables.
    pub database: String,
    /// User name; `${ENV}` references are expanded.
    pub user: Option<String>,
    /// Password; `${ENV}` references are expanded (keep it in a Secret).
    pub password: Option<String>,
    /// Let the client validate rows against the server's schema. Needs a
    /// current server (`RowBinaryWithNamesAndTypes`); must be off for 18.x.
    pub validation: bool,
    /// Rows per INSERT (the spool batch size).
    pub batch_rows: usize,
    /// Longest time a record waits in a partial batch, e.g. `1s`, `500ms`.
    #[serde(with = "duration::text")]
    #[schemars(with = "String")]
    pub flush_interval: Duration,
    /// Cluster name: DDL runs `ON CLUSTER`, the data lives in
    /// `ReplicatedReplacingMergeTree` tables on every node, inserts (made
    /// synchronous) and reads go through `Distributed` tables.
    pub cluster: Option<String>,
    /// Timeout of one INSERT or query, e.g. `30s`.
    #[serde(with = "duration::text")]
    #[schemars(with = "String")]
    pub insert_timeout: Duration,
    /// Keep records this long, e.g. `30d` (at least a day): whole days
    /// (`event_date` partitions) older than this are dropped, hourly.
    /// Unset: kept forever.
    #[serde(with = "duration::opt_text")]
    #[schemars(with = "Option<String>")]
    pub retention: Option<Duration>,
    /// What is inserted of the exchanged content: `full` (default),
    /// `metadata` or `none`; never more than the spool kept
    /// (`store.spool.content`).
    pub content: ContentMode,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".to_owned(),
            database: "egret".to_owned(),
            user: None,
            password: None,
            validation: false,
            batch_rows: 10_000,
            flush_interval: Duration::from_secs(1),
            cluster: None,
            insert_timeout: Duration::from_secs(30),
            retention: None,
            content: ContentMode::Full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_durations() {
        let cfg: ClickHouseConfig = serde_json::from_str(
            r#"{"url": "http://ch:8123", "password": "${CH_PW}", "flushInterval": "250ms"}"#,
        )
        .unwrap();
        assert_eq!(cfg.database, "egret");
        assert_eq!(cfg.batch_rows, 10_000);
        assert_eq!(cfg.flush_interval, Duration::from_millis(250));
        assert_eq!(cfg.insert_timeout, Duration::from_secs(30));
        assert!(!cfg.validation);
        assert_eq!(cfg.retention, None);
        let cfg: ClickHouseConfig = serde_json::from_str(r#"{"retention": "30d"}"#).unwrap();
        assert_eq!(cfg.retention, Some(Duration::from_secs(30 * 86_400)));
        let back: ClickHouseConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        assert!(serde_json::from_str::<ClickHouseConfig>(r#"{"retention": "a while"}"#).is_err());
        assert!(serde_json::from_str::<ClickHouseConfig>(r#"{"flushInterval": "soon"}"#).is_err());
        assert!(serde_json::from_str::<ClickHouseConfig>(r#"{"nope": 1}"#).is_err());
        let text = serde_json::to_string(&schemars::schema_for!(ClickHouseConfig)).unwrap();
        assert!(
            text.contains("flushInterval") && text.contains("batchRows"),
            "{text}"
        );
    }
}
