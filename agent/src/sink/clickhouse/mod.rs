//! ClickHouse sink: schema management, spool → ClickHouse delivery, and the
//! query helper behind `egret records` when ClickHouse is configured.
//!
//! # Schema
//!
//! Two tables in the configured database (default `egret`): `transactions`
//! and `flows`. Column names are attribute names with dots → underscores
//! ([`crate::semconv::column_name`]). Each table has
//!
//! * the envelope: `egret_record_id String`, `egret_start_time_unix_nano
//!   Int64`, `egret_end_time_unix_nano Nullable(Int64)`, and two
//!   `MATERIALIZED` columns derived from the start time for partitioning and
//!   time filters: `event_time DateTime('UTC')`, `event_date Date`;
//! * one typed column per well-known attribute of the design's table
//!   (attribution, `gen_ai.*`/MCP, `http`, `egret.*`), `Nullable(...)` so an
//!   absent attribute stays absent; `invocation_id` is a plain `String`
//!   (it is in the sorting key), `gen_ai_response_finish_reasons` is
//!   `Array(String)`, booleans are `UInt8`;
//! * bodies in plain `String` columns (`egret_request_body`,
//!   `egret_response_body`, transactions only), decoded when they were
//!   content-encoded, with their per-direction flags beside them
//!   (`egret_{request,response}_body_b64`, `..._content_encoding`,
//!   `..._body_decode_error`);
//! * every other attribute in parallel arrays `attr_keys Array(String)`,
//!   `attr_values Array(String)`, `attr_types Array(Enum8(...))` — values as
//!   text (strings raw, numbers decimal, booleans `true`/`false`, string
//!   arrays as JSON), the type so [`query_records`] restores the exact
//!   attribute. An attribute whose value has another type than its column
//!   ([`column_type`]) also lands in the arrays, so nothing is ever lost.
//!
//! Only types ClickHouse 18.16 accepts are used (no Map, DateTime64, JSON,
//! Bool, LowCardinality), so the same schema works on current servers.
//!
//! # Exactly once
//!
//! The spool delivers at least once (a crash between ClickHouse's ack and
//! the cursor commit, or a retry after a timeout whose insert did land,
//! re-sends rows). The tables are `ReplacingMergeTree` with
//! `ORDER BY (invocation_id, egret_start_time_unix_nano, egret_record_id)`:
//! a re-sent record has the identical sorting key and — because the
//! partition is derived from its start time — lands in the same partition,
//! so background merges keep one copy. Until a merge ran, readers must
//! deduplicate: [`query_records`] uses `SELECT ... FINAL`, verified on 18.16
//! (`count()` = 2, `count() FINAL` = 1 after a duplicate insert). Ad-hoc
//! queries should use `FINAL` too, or `uniqExact(egret_record_id)` /
//! `argMax(...)` grouped by `egret_record_id` for large aggregations.
//!
//! # Rejected records
//!
//! A batch the server refuses for its data ([`SinkError::rejects_data`]) is
//! split in halves, recursively: accepted parts are inserted, each record
//! rejected on its own is written to the dead-letter file ([`DeadLetter`],
//! fsync'd) and counted, and the cursor is committed past the batch. If
//! nothing of the batch is accepted, nothing is set aside: the batch is
//! retried with backoff, joined by newer records (a lone bad record and a
//! schema that refuses every row look the same until then).
//!
//! # Migrations
//!
//! [`ClickHouseSink::migrate`] is idempotent: `CREATE DATABASE/TABLE IF NOT
//! EXISTS`, then every column of the current layout missing from
//! `system.columns` is added with `ALTER TABLE ... ADD COLUMN`. (18.16 has no
//! `ADD COLUMN IF NOT EXISTS`.) Columns are only ever added, never changed.
//!
//! # Cluster
//!
//! With `cluster` set, DDL runs `ON CLUSTER` (the server needs
//! `distributed_ddl`, i.e. ZooKeeper), the data lives in `<table>_local`
//! and `<table>` is a `Distributed` table sharded by
//! `cityHash64(invocation_id)` — every copy of a record goes to the same
//! shard, so per-shard `FINAL` still deduplicates. Use `Replicated*` engines
//! by creating the local tables yourself beforehand (`IF NOT EXISTS` keeps
//! them).
//!
//! # Code
//!
//! - `row`: the row layout and Record ⇄ row conversion;
//! - `schema`: DDL and migrations;
//! - `writer`: the delivery loop (batches, retries, splitting);
//! - `dead_letter`: where rejected records are set aside;
//! - `status`: state and counters for the admin endpoints;
//! - `query`: reading records back;
//! - `error`: [`SinkError`] and which errors are about the data.
use ::clickhouse::{Client, Compression};

use crate::config::{expand_process_env, ClickHouseConfig};

mod dead_letter;
mod error;
mod query;
mod row;
mod schema;
mod status;
mod writer;

pub use dead_letter::{DeadLetter, DEAD_LETTER_FILE, DEAD_LETTER_MAX_BYTES};
pub use error::{InvalidConfig, SinkError};
pub use query::query_records;
pub use row::{column_type, ColKind, Column, FlowRow, InvocationRow, TransactionRow};
pub use schema::schema_ddl;
pub use status::{ClickHouseReport, SinkState, SinkStatus, StatusHandle};
pub use writer::InsertCounts;

use schema::Names;

/// Delivers spooled records to ClickHouse. See the module docs.
#[derive(Clone)]
pub struct ClickHouseSink {
    cfg: ClickHouseConfig,
    client: Client,
    names: Names,
    tx_table: String,
    flow_table: String,
    inv_table: String,
    status: StatusHandle,
    dead_letter: Option<DeadLetter>,
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink")
            .field("url", &self.cfg.url)
            .field("database", &self.cfg.database)
            .finish_non_exhaustive()
    }
}

/// The name of the sink's spool cursor.
pub const CURSOR_NAME: &str = "clickhouse";

impl ClickHouseSink {
    /// Builds the client (no I/O). Fails on a bad config or a missing
    /// `${ENV}` variable.
    pub fn new(cfg: &ClickHouseConfig) -> Result<Self, SinkError> {
        let names = Names::new(cfg)?;
        if cfg.batch_rows == 0 {
            return Err(InvalidConfig::ZeroBatchRows.into());
        }
        // No default database on the client: every statement is fully
        // qualified, so DDL works before the database exists.
        let mut client = Client::default()
            .with_url(cfg.url.as_str())
            .with_compression(Compression::Lz4)
            .with_validation(cfg.validation);
        if let Some(u) = &cfg.user {
            client = client.with_user(expand_process_env(u)?);
        }
        if let Some(p) = &cfg.password {
            client = client.with_password(expand_process_env(p)?);
        }
        Ok(ClickHouseSink {
            tx_table: names.table(TransactionRow::TABLE),
            flow_table: names.table(FlowRow::TABLE),
            inv_table: names.table(InvocationRow::TABLE),
            names,
            cfg: cfg.clone(),
            client,
            status: StatusHandle::default(),
            dead_letter: None,
        })
    }

    /// Sets the dead-letter file for records the server keeps rejecting.
    /// Without one such records are still skipped, and counted as overflow.
    pub fn with_dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.dead_letter = Some(dead_letter);
        self
    }

    pub fn config(&self) -> &ClickHouseConfig {
        &self.cfg
    }

    /// A handle to the live status (for the admin/status endpoint).
    pub fn status_handle(&self) -> StatusHandle {
        self.status.clone()
    }

    pub fn status(&self) -> SinkStatus {
        self.status.get()
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, ::clickhouse::error::Error>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.cfg.insert_timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SinkError::Timeout(what, self.cfg.insert_timeout)),
        }
    }

    /// `SELECT 1` against the server (for `egret doctor` and readiness).
    pub async fn healthcheck(&self) -> Result<(), SinkError> {
        let one = self
            .timed(
                "healthcheck",
                self.client.query("SELECT toUInt8(1)").fetch_one::<u8>(),
            )
            .await;
        match one {
            Ok(1) => Ok(()),
            Ok(v) => Err(SinkError::Healthcheck(v)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_env_is_a_config_error() {
        // A missing ${ENV} is a clear config error.
        let err = ClickHouseSink::new(&ClickHouseConfig {
            password: Some("${EGRET_TEST_SURELY_UNSET}".into()),
            ..ClickHouseConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("EGRET_TEST_SURELY_UNSET"), "{err}");
    }
}
