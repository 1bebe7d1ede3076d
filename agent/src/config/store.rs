//! `store`: where records are kept — the durable local spool always,
//! ClickHouse when configured.
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ClickHouseConfig, ContentMode};

/// Where records are kept: the local spool always, ClickHouse when set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StoreConfig {
    /// The durable local spool (default: `<stateDir>/spool`, 1 GiB).
    pub spool: Option<SpoolConfig>,
    /// ClickHouse; every record is inserted, none lost while it is down.
    pub clickhouse: Option<ClickHouseConfig>,
}

impl StoreConfig {
    /// The spool in force: `spool` when given, else the default one in
    /// `<state_dir>/spool`.
    pub fn spool_or_default(&self, state_dir: &Path) -> SpoolConfig {
        self.spool.clone().unwrap_or_else(|| SpoolConfig {
            dir: state_dir.join("spool"),
            ..SpoolConfig::default()
        })
    }
}

/// Spool configuration (embedded in the agent config as `spool`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SpoolConfig {
    /// Directory holding the segment files and cursor positions.
    pub dir: PathBuf,
    /// Upper bound of the spool's size on disk, in bytes (default 1 GiB).
    pub max_bytes: u64,
    /// Size at which the active segment is closed and a new one started
    /// (default 64 MiB; capped at `maxBytes`).
    pub segment_bytes: u64,
    /// What the spool keeps of the exchanged content: `full` (default),
    /// `metadata` (no bodies) or `none` (no bodies, no details read from
    /// them); ClickHouse, `egret records` and `egret tail` see no more.
    pub content: ContentMode,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("/var/lib/egret/spool"),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            content: ContentMode::Full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_json_with_defaults() {
        let c: SpoolConfig =
            serde_json::from_str(r#"{"dir": "/tmp/s", "maxBytes": 1000000}"#).unwrap();
        assert_eq!(c.segment_bytes, 64 << 20);
        assert_eq!(c.max_bytes, 1_000_000);
        assert!(serde_json::from_str::<SpoolConfig>(r#"{"bogus": 1}"#).is_err());
        let schema = schemars::schema_for!(SpoolConfig);
        let text = serde_json::to_string(&schema).unwrap();
        assert!(text.contains("segmentBytes"), "{text}");
    }

    #[test]
    fn spool_defaults_to_the_state_dir() {
        let s = StoreConfig::default().spool_or_default(Path::new("/st"));
        assert_eq!(s.dir, PathBuf::from("/st/spool"));
        assert_eq!(s.max_bytes, SpoolConfig::default().max_bytes);
        let given = SpoolConfig {
            dir: "/data/spool".into(),
            ..SpoolConfig::default()
        };
        let store = StoreConfig {
            spool: Some(given.clone()),
            clickhouse: None,
        };
        assert_eq!(store.spool_or_default(Path::new("/st")), given);
    }
}
