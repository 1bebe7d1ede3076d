//! The tables' DDL, generated from the row layout, and the idempotent
//! migration that creates them and adds missing columns (see "Migrations"
//! and "Cluster" in the module docs).
use super::row::{Column, FlowRow, InvocationRow, TransactionRow, ATTR_TYPES_SQL};
use super::{ClickHouseSink, InvalidConfig, SinkError};
use crate::config::ClickHouseConfig;

/// Where cluster-mode tables keep their replication state in ZooKeeper:
/// `<prefix>/{shard}/<database>/<table>_local`.
pub const ZOOKEEPER_PREFIX: &str = "/clickhouse/tables";

/// Columns computed from the start time: (name, type, expression in the
/// data tables, expression in the `Distributed` ones — self-contained:
/// 18.16 does not resolve an alias naming another alias).
/// `MATERIALIZED` in the data tables (stored: the partition key), `ALIAS`
/// in the `Distributed` ones — 18.16 forwards a `Distributed` table's
/// materialized columns to the shards with a synchronous insert, which the
/// shards refuse (code 44); an `ALIAS` is not inserted, and a query naming
/// it reaches the shards by name, where the stored column (and partition
/// pruning) answers it.
const COMPUTED_COLUMNS: &[(&str, &str, &str, &str)] = &[
    (
        "event_time",
        "DateTime('UTC')",
        "toDateTime(intDiv(egret_start_time_unix_nano, 1000000000), 'UTC')",
        "toDateTime(intDiv(egret_start_time_unix_nano, 1000000000), 'UTC')",
    ),
    (
        "event_date",
        "Date",
        "toDate(event_time)",
        "toDate(toDateTime(intDiv(egret_start_time_unix_nano, 1000000000), 'UTC'))",
    ),
];

/// The columns of a table holding data, with their full type spec.
fn all_columns(columns: &[Column]) -> Vec<(&'static str, String)> {
    columns_with(columns, "MATERIALIZED")
}

/// The columns of a `Distributed` table over it.
fn distributed_columns(columns: &[Column]) -> Vec<(&'static str, String)> {
    columns_with(columns, "ALIAS")
}

fn columns_with(columns: &[Column], computed: &str) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&str, String)> = columns
        .iter()
        .map(|c| (c.name, c.kind.sql_type().to_owned()))
        .collect();
    out.push(("attr_keys", "Array(String)".to_owned()));
    out.push(("attr_values", "Array(String)".to_owned()));
    out.push(("attr_types", ATTR_TYPES_SQL.to_owned()));
    for (name, ty, stored, alias) in COMPUTED_COLUMNS {
        let expr = if computed == "ALIAS" { alias } else { stored };
        out.push((name, format!("{ty} {computed} {expr}")));
    }
    out
}

fn column_list(cols: &[(&str, String)]) -> String {
    cols.iter()
        .map(|(name, ty)| format!("    `{name}` {ty}"))
        .collect::<Vec<_>>()
        .join(",\n")
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

    pub(super) fn db(&self) -> &str {
        &self.db
    }

    /// ` ON CLUSTER `name`` in cluster mode, else empty.
    pub(super) fn on_cluster(&self) -> &str {
        &self.on_cluster
    }

    pub(super) fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The table inserts and queries use.
    pub(super) fn table(&self, t: &str) -> String {
        format!("`{}`.`{t}`", self.db)
    }

    /// The table holding the data (the `_local` one in cluster mode).
    pub(super) fn data_table(&self, t: &str) -> String {
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

pub(super) fn tables() -> [(&'static str, &'static [Column]); 3] {
    [
        (TransactionRow::TABLE, TransactionRow::COLUMNS),
        (FlowRow::TABLE, FlowRow::COLUMNS),
        (InvocationRow::TABLE, InvocationRow::COLUMNS),
    ]
}

fn create_table_ddl(n: &Names, t: &str, cols: &[Column]) -> Vec<String> {
    let mut out = vec![create_data_table(n, t, cols)];
    if n.cluster.is_some() {
        out.push(create_distributed_table(n, t, cols));
    }
    out
}

fn create_data_table(n: &Names, t: &str, cols: &[Column]) -> String {
    let body = column_list(&all_columns(cols));
    let data = n.data_table(t);
    let engine = match n.cluster {
        // One replication queue per shard and table: the ZooKeeper path
        // names the shard (macro), the database and the table; each
        // replica registers under its `{replica}` macro.
        Some(_) => format!(
            "ReplicatedReplacingMergeTree('{ZOOKEEPER_PREFIX}/{{shard}}/{db}/{data}', '{{replica}}')",
            db = n.db
        ),
        None => "ReplacingMergeTree()".to_owned(),
    };
    format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`{data}`{oc} (\n{body}\n) \
         ENGINE = {engine} \
         PARTITION BY event_date \
         ORDER BY (invocation_id, egret_start_time_unix_nano, egret_record_id)",
        db = n.db,
        oc = n.on_cluster
    )
}

fn create_distributed_table(n: &Names, t: &str, cols: &[Column]) -> String {
    let body = column_list(&distributed_columns(cols));
    let cluster = n.cluster.as_deref().unwrap_or_default();
    format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`{t}`{oc} (\n{body}\n) \
         ENGINE = Distributed(`{cluster}`, `{db}`, `{data}`, cityHash64(invocation_id))",
        db = n.db,
        oc = n.on_cluster,
        data = n.data_table(t),
    )
}

/// Why a table with `existing` (name, default kind) columns does not match
/// `want` — a column missing, or a computed one not of kind `computed` —
/// or `None`.
fn stale_columns(
    want: &[(&str, String)],
    existing: &[(String, String)],
    computed: &str,
) -> Option<String> {
    want.iter().find_map(|(name, _)| {
        let kind = existing.iter().find(|(e, _)| e == name).map(|(_, k)| k);
        let is_computed = COMPUTED_COLUMNS.iter().any(|(c, ..)| c == name);
        match kind {
            None => Some(format!("column {name} missing")),
            Some(k) if is_computed && k != computed => Some(format!("column {name} is {k}")),
            Some(_) => None,
        }
    })
}

impl ClickHouseSink {
    /// Creates the database and tables if needed and adds missing columns.
    /// Idempotent; safe to run from several agents at once.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        let n = &self.names;
        if n.cluster.is_some() && self.cluster_schema_current().await? {
            // Nothing to do: no `ON CLUSTER` statement, which would wait for
            // every node — an agent (re)starting while a node is down still
            // gets to insert.
            for (t, _) in tables() {
                self.check_replicated(&n.data_table(t)).await?;
            }
            return Ok(());
        }
        self.exec(&format!(
            "CREATE DATABASE IF NOT EXISTS `{}`{}",
            n.db, n.on_cluster
        ))
        .await?;
        for (t, cols) in tables() {
            let data = n.data_table(t);
            self.exec(&create_data_table(n, t, cols)).await?;
            if n.cluster.is_some() {
                self.check_replicated(&data).await?;
            }
            let existing = self.columns(&data).await?;
            for (name, ty) in all_columns(cols) {
                if existing.iter().any(|(e, _)| e == name) {
                    continue;
                }
                tracing::info!(table = %data, column = name, "adding ClickHouse column");
                self.exec(&format!(
                    "ALTER TABLE `{}`.`{data}`{} ADD COLUMN `{name}` {ty}",
                    n.db, n.on_cluster
                ))
                .await?;
            }
            if n.cluster.is_some() {
                self.migrate_distributed(t, cols).await?;
            }
        }
        Ok(())
    }

    /// The `Distributed` table over `<t>_local`, created or — when it lacks
    /// a column or has the computed ones `MATERIALIZED` (as egret made them
    /// before its inserts became synchronous) — dropped and created again
    /// `ON CLUSTER`. It holds no data of its own (inserts are synchronous),
    /// and 18.16 refuses `ALTER ... ON CLUSTER` on a table that is not
    /// replicated when the shards are (`internal_replication`), so
    /// re-creating it is how it gains columns.
    async fn migrate_distributed(&self, t: &str, cols: &[Column]) -> Result<(), SinkError> {
        let n = &self.names;
        self.exec(&create_distributed_table(n, t, cols)).await?;
        let existing = self.columns(t).await?;
        if let Some(why) = stale_columns(&distributed_columns(cols), &existing, "ALIAS") {
            tracing::info!(table = %t, %why, "re-creating the ClickHouse Distributed table");
            self.exec(&format!(
                "DROP TABLE IF EXISTS `{}`.`{t}`{}",
                n.db, n.on_cluster
            ))
            .await?;
            self.exec(&create_distributed_table(n, t, cols)).await?;
        }
        Ok(())
    }

    /// In cluster mode: whether the node the agent talks to has both
    /// tables of both kinds with every column as this version makes them.
    async fn cluster_schema_current(&self) -> Result<bool, SinkError> {
        for (t, cols) in tables() {
            let local = self.columns(&self.names.data_table(t)).await?;
            if stale_columns(&all_columns(cols), &local, "MATERIALIZED").is_some() {
                return Ok(false);
            }
            let dist = self.columns(t).await?;
            if stale_columns(&distributed_columns(cols), &dist, "ALIAS").is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// (name, default kind) of `table`'s columns, as the server the agent
    /// talks to sees them.
    async fn columns(&self, table: &str) -> Result<Vec<(String, String)>, SinkError> {
        self.timed(
            "migrate",
            self.client
                .query(
                    "SELECT name, default_kind FROM system.columns WHERE database = ? AND table = ?",
                )
                .bind(self.names.db.as_str())
                .bind(table)
                .fetch_all::<(String, String)>(),
        )
        .await
    }

    /// Cluster mode wants replicated data tables; local tables an older
    /// egret (or an operator) created with another engine are kept as they
    /// are (`IF NOT EXISTS`), with a warning: without replicas a node lost
    /// is its shard's data lost.
    async fn check_replicated(&self, data: &str) -> Result<(), SinkError> {
        let engine: Vec<String> = self
            .timed(
                "migrate",
                self.client
                    .query("SELECT engine FROM system.tables WHERE database = ? AND name = ?")
                    .bind(self.names.db.as_str())
                    .bind(data)
                    .fetch_all::<String>(),
            )
            .await?;
        if let Some(e) = engine.first().filter(|e| !e.starts_with("Replicated")) {
            tracing::warn!(
                table = %data,
                engine = %e,
                "ClickHouse cluster table is not replicated (created before egret made \
                 ReplicatedReplacingMergeTree tables, or by hand); kept as it is"
            );
        }
        Ok(())
    }

    pub(super) async fn exec(&self, sql: &str) -> Result<(), SinkError> {
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
        assert!(ddl.iter().any(|s| s.contains(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/egret/flows_local', '{replica}')"
        )));
        assert!(!ddl.iter().any(|s| s.contains("ReplacingMergeTree()")));
        // Computed columns: stored in the data tables, aliases in the
        // Distributed ones (module docs).
        let dist = ddl
            .iter()
            .find(|s| s.contains("`egret`.`flows` ON CLUSTER"))
            .unwrap();
        assert!(
            dist.contains("`event_date` Date ALIAS toDate(toDateTime(intDiv(egret_start_time_unix_nano, 1000000000), 'UTC'))"),
            "{dist}"
        );
        assert!(!dist.contains("MATERIALIZED"), "{dist}");
        let local = ddl
            .iter()
            .find(|s| s.contains("`egret`.`flows_local` ON CLUSTER"))
            .unwrap();
        assert!(
            local.contains("`event_date` Date MATERIALIZED toDate(event_time)"),
            "{local}"
        );
        let bad = ClickHouseConfig {
            database: "x`; DROP".into(),
            ..ClickHouseConfig::default()
        };
        assert!(matches!(schema_ddl(&bad), Err(SinkError::Config(_))));
    }
}
