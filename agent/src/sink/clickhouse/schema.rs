//! The tables' DDL, generated from the row layout, and the idempotent
//! migration that creates them and adds missing columns (see "Migrations"
//! and "Cluster" in the module docs).
use super::row::{Column, FlowRow, InvocationRow, TransactionRow, ATTR_TYPES_SQL};
use super::{ClickHouseSink, InvalidConfig, SinkError};
use crate::config::ClickHouseConfig;

const MATERIALIZED_COLUMNS: &[(&str, &str)] = &[
    (
        "event_time",
        "DateTime('UTC') MATERIALIZED toDateTime(intDiv(egret_start_time_unix_nano, 1000000000), 'UTC')",
    ),
    ("event_date", "Date MATERIALIZED toDate(event_time)"),
];

fn all_columns(columns: &[Column]) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = columns
        .iter()
        .map(|c| (c.name, c.kind.sql_type()))
        .collect();
    out.push(("attr_keys", "Array(String)"));
    out.push(("attr_values", "Array(String)"));
    out.push(("attr_types", ATTR_TYPES_SQL));
    out.extend_from_slice(MATERIALIZED_COLUMNS);
    out
}

/// Names and identifiers the schema uses (validated, already quoted).
#[derive(Clone, Debug)]
pub(super) struct Names {
    db: String,
    on_cluster: String,
    cluster: Option<String>,
}

impl Names {
    pub(super) fn new(cfg: &ClickHouseConfig) -> Result<Self, SinkError> {
        let ident = |what: &'static str, s: &str| -> Result<(), SinkError> {
            let ok = !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if ok {
                Ok(())
            } else {
                Err(InvalidConfig::Identifier {
                    what,
                    value: s.to_owned(),
                }
                .into())
            }
        };
        ident("database", &cfg.database)?;
        if let Some(c) = &cfg.cluster {
            ident("cluster", c)?;
        }
        Ok(Names {
            db: cfg.database.clone(),
            on_cluster: cfg
                .cluster
                .as_ref()
                .map(|c| format!(" ON CLUSTER `{c}`"))
                .unwrap_or_default(),
            cluster: cfg.cluster.clone(),
        })
    }

    /// The table inserts and queries use.
    pub(super) fn table(&self, t: &str) -> String {
        format!("`{}`.`{t}`", self.db)
    }

    /// The table holding the data (the `_local` one in cluster mode).
    fn data_table(&self, t: &str) -> String {
        match self.cluster {
            Some(_) => format!("{t}_local"),
            None => t.to_owned(),
        }
    }
}

/// The statements creating the schema from scratch (no migrations). Exposed
/// for docs and tests.
pub fn schema_ddl(cfg: &ClickHouseConfig) -> Result<Vec<String>, SinkError> {
    let n = Names::new(cfg)?;
    let mut out = vec![format!(
        "CREATE DATABASE IF NOT EXISTS `{}`{}",
        n.db, n.on_cluster
    )];
    for (t, cols) in tables() {
        out.extend(create_table_ddl(&n, t, cols));
    }
    Ok(out)
}

fn tables() -> [(&'static str, &'static [Column]); 3] {
    [
        (TransactionRow::TABLE, TransactionRow::COLUMNS),
        (FlowRow::TABLE, FlowRow::COLUMNS),
        (InvocationRow::TABLE, InvocationRow::COLUMNS),
    ]
}

fn create_table_ddl(n: &Names, t: &str, cols: &[Column]) -> Vec<String> {
    let body = all_columns(cols)
        .iter()
        .map(|(name, ty)| format!("    `{name}` {ty}"))
        .collect::<Vec<_>>()
        .join(",\n");
    let data = n.data_table(t);
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`{data}`{oc} (\n{body}\n) \
         ENGINE = ReplacingMergeTree() \
         PARTITION BY event_date \
         ORDER BY (invocation_id, egret_start_time_unix_nano, egret_record_id)",
        db = n.db,
        oc = n.on_cluster
    )];
    if let Some(cluster) = &n.cluster {
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`{t}`{oc} AS `{db}`.`{data}` \
             ENGINE = Distributed(`{cluster}`, `{db}`, `{data}`, cityHash64(invocation_id))",
            db = n.db,
            oc = n.on_cluster
        ));
    }
    out
}

impl ClickHouseSink {
    /// Creates the database and tables if needed and adds missing columns.
    /// Idempotent; safe to run from several agents at once.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        let n = &self.names;
        self.exec(&format!(
            "CREATE DATABASE IF NOT EXISTS `{}`{}",
            n.db, n.on_cluster
        ))
        .await?;
        for (t, cols) in tables() {
            for sql in create_table_ddl(n, t, cols) {
                self.exec(&sql).await?;
            }
            let mut targets = vec![n.data_table(t)];
            if n.cluster.is_some() {
                targets.push(t.to_owned());
            }
            for table in targets {
                let existing: Vec<String> = self
                    .timed(
                        "migrate",
                        self.client
                            .query(
                                "SELECT name FROM system.columns WHERE database = ? AND table = ?",
                            )
                            .bind(n.db.as_str())
                            .bind(table.as_str())
                            .fetch_all::<String>(),
                    )
                    .await?;
                for (name, ty) in all_columns(cols) {
                    if existing.iter().any(|e| e == name) {
                        continue;
                    }
                    tracing::info!(table = %table, column = name, "adding ClickHouse column");
                    self.exec(&format!(
                        "ALTER TABLE `{}`.`{table}`{} ADD COLUMN `{name}` {ty}",
                        n.db, n.on_cluster
                    ))
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn exec(&self, sql: &str) -> Result<(), SinkError> {
        self.timed("DDL", self.client.query(sql).execute()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_uses_only_old_server_types() {
        let cfg = ClickHouseConfig::default();
        let ddl = schema_ddl(&cfg).unwrap().join("\n");
        for banned in [
            "Map(",
            "DateTime64",
            "JSON",
            "Bool ",
            "LowCardinality",
            "CODEC",
            "TTL",
        ] {
            assert!(!ddl.contains(banned), "{banned} in {ddl}");
        }
        assert!(ddl.contains("ReplacingMergeTree()"));
        assert!(ddl.contains("`egret`.`transactions`"));

        let cfg = ClickHouseConfig {
            cluster: Some("main".into()),
            ..ClickHouseConfig::default()
        };
        let ddl = schema_ddl(&cfg).unwrap();
        assert!(ddl[0].ends_with("ON CLUSTER `main`"));
        assert!(ddl
            .iter()
            .any(|s| s.contains("`egret`.`flows_local` ON CLUSTER `main`")));
        assert!(ddl.iter().any(|s| s.contains(
            "Distributed(`main`, `egret`, `transactions_local`, cityHash64(invocation_id))"
        )));
        let bad = ClickHouseConfig {
            database: "x`; DROP".into(),
            ..ClickHouseConfig::default()
        };
        assert!(matches!(schema_ddl(&bad), Err(SinkError::Config(_))));
    }
}
