//! The sink's connection state and counters, shared with the admin
//! endpoints.
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::SinkError;
use crate::record::now_unix_nanos;

/// Connection state for the status endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Not yet talked to the server.
    Starting,
    /// Last operation succeeded.
    Connected,
    /// Server unreachable (network error or timeout); retrying.
    Disconnected,
    /// Server answered with an error; retrying.
    Error,
}

/// A snapshot of the sink's state and counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SinkStatus {
    pub state: SinkState,
    pub last_error: Option<String>,
    pub last_error_unix_nano: Option<i64>,
    pub last_insert_unix_nano: Option<i64>,
    pub rows_inserted: u64,
    pub batches_inserted: u64,
    pub retries: u64,
    /// Rows read from the spool and waiting for an acknowledged INSERT.
    pub pending_rows: u64,
    /// Records the server rejected on their own (isolated by splitting the
    /// batch), set aside in the dead-letter file and skipped.
    pub dead_lettered: u64,
    /// Of those, records not written to the dead-letter file (file full
    /// or not writable): lost, and counted here.
    pub dead_letter_overflow: u64,
    /// Days (partitions, per table) dropped by retention.
    pub retention_partitions_dropped: u64,
    /// Retention passes that failed (retried at the next interval).
    pub retention_failures: u64,
    /// The last failed pass's error; cleared by a pass that succeeds.
    pub retention_last_error: Option<String>,
    pub retention_last_run_unix_nano: Option<i64>,
}

impl Default for SinkStatus {
    fn default() -> Self {
        SinkStatus {
            state: SinkState::Starting,
            last_error: None,
            last_error_unix_nano: None,
            last_insert_unix_nano: None,
            rows_inserted: 0,
            batches_inserted: 0,
            retries: 0,
            pending_rows: 0,
            dead_lettered: 0,
            dead_letter_overflow: 0,
            retention_partitions_dropped: 0,
            retention_failures: 0,
            retention_last_error: None,
            retention_last_run_unix_nano: None,
        }
    }
}

/// Shared, cheap-to-clone view of a sink's status.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle(Arc<Mutex<SinkStatus>>);

impl StatusHandle {
    pub fn get(&self) -> SinkStatus {
        self.lock().clone()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub(super) fn update(&self, f: impl FnOnce(&mut SinkStatus)) {
        f(&mut self.lock());
    }
    pub(super) fn error(&self, e: &SinkError) {
        let msg = e.to_string();
        let state = if e.is_disconnect() {
            SinkState::Disconnected
        } else {
            SinkState::Error
        };
        self.update(|s| {
            s.state = state;
            s.last_error = Some(msg);
            s.last_error_unix_nano = Some(now_unix_nanos());
        });
    }
}

/// The ClickHouse sink's admin report (`clickhouse: null` in `/status` and
/// no metrics when none is configured).
#[derive(Debug, Clone)]
pub struct ClickHouseReport(pub Option<StatusHandle>);

impl crate::admin::Report for ClickHouseReport {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        let Some(ch) = &self.0 else {
            return Ok(());
        };
        let st = ch.get();
        m.counter(
            "egret_clickhouse_rows_inserted",
            "Rows ClickHouse acknowledged",
            &[(vec![], st.rows_inserted)],
        )?;
        m.counter(
            "egret_clickhouse_retries",
            "Failed ClickHouse inserts retried",
            &[(vec![], st.retries)],
        )?;
        m.counter(
            "egret_clickhouse_dead_letter",
            "Records ClickHouse rejected on their own, set aside in the dead-letter file and skipped",
            &[(vec![], st.dead_lettered)],
        )?;
        m.counter(
            "egret_clickhouse_dead_letter_overflow",
            "Rejected records not written to the dead-letter file (full or failing): lost",
            &[(vec![], st.dead_letter_overflow)],
        )?;
        m.counter(
            "egret_clickhouse_retention_failures",
            "ClickHouse retention passes (dropping days older than store.clickhouse.retention) that failed",
            &[(vec![], st.retention_failures)],
        )?;
        let up = matches!(st.state, SinkState::Connected);
        m.gauge(
            "egret_clickhouse_up",
            "1 when the last ClickHouse insert or check succeeded",
            &[(vec![], i64::from(up))],
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        s.insert(
            "clickhouse".into(),
            serde_json::json!(self.0.as_ref().map(StatusHandle::get)),
        );
    }
}
