//! Retention: whole days older than `retention` are dropped (see
//! "Retention" in the module docs).
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ClickHouseSink, SinkError};
use crate::record::now_unix_nanos;

/// How often a pass runs (the first right after the schema migration).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// The shortest `retention` accepted: partitions are days, and a shorter
/// value is far more likely a typo (`30m` for 30 months) than a wish.
pub const MIN_RETENTION: Duration = Duration::from_secs(86_400);

/// A partition one retention pass dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedPartition {
    /// The data table (`transactions_local` in cluster mode).
    pub table: String,
    /// The day, `YYYY-MM-DD` (UTC).
    pub day: String,
}

/// A day as ClickHouse prints a `Date`: exactly `YYYY-MM-DD`. Anything
/// else is not spliced into a statement.
fn is_day(s: &str) -> bool {
    s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

impl ClickHouseSink {
    /// One retention pass as of `now_unix_nano`: for both tables, every
    /// `event_date` partition whose whole day lies before `now −
    /// retention` (UTC days; the day containing that instant is kept) is
    /// dropped — `ALTER TABLE ... [ON CLUSTER] DROP PARTITION` on the data
    /// tables, which on replicated tables every replica applies. Which days
    /// exist is read through the table queries use (the `Distributed` one
    /// in cluster mode: every shard). Does nothing without `retention`.
    pub async fn enforce_retention_at(
        &self,
        now_unix_nano: i64,
    ) -> Result<Vec<DroppedPartition>, SinkError> {
        let Some(retention) = self.cfg.retention else {
            return Ok(Vec::new());
        };
        let keep_from_ns =
            now_unix_nano.saturating_sub(i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX));
        let n = &self.names;
        let mut dropped = Vec::new();
        for (t, _) in super::schema::tables() {
            let read_from = n.table(t);
            // The cut-off day computed as `event_date` is (module docs).
            let days: Vec<String> = self
                .timed(
                    "retention",
                    self.client
                        .query(&format!(
                            "SELECT DISTINCT toString(event_date) FROM {read_from} \
                             WHERE event_date < toDate(toDateTime(intDiv(toInt64(?), 1000000000), 'UTC'))"
                        ))
                        .bind(keep_from_ns)
                        .fetch_all::<String>(),
                )
                .await?;
            let data = n.data_table(t);
            let mut days: Vec<String> = days.into_iter().filter(|d| is_day(d)).collect();
            days.sort_unstable();
            for day in days {
                self.exec(&format!(
                    "ALTER TABLE `{}`.`{data}`{} DROP PARTITION '{day}'",
                    n.db(),
                    n.on_cluster()
                ))
                .await?;
                tracing::info!(table = %data, day = %day, "retention: dropped a day of records");
                self.status.update(|s| s.retention_partitions_dropped += 1);
                dropped.push(DroppedPartition {
                    table: data.clone(),
                    day,
                });
            }
        }
        Ok(dropped)
    }

    /// Runs a retention pass now and every [`RETENTION_INTERVAL`] until
    /// `shutdown`. A failed pass is logged and counted
    /// (`retention_failures`, `retention_last_error`) and tried again at the
    /// next interval; it never touches the insert path's state.
    pub(super) async fn retention_loop(self, shutdown: CancellationToken) {
        loop {
            let result = self.enforce_retention_at(now_unix_nanos()).await;
            let now = now_unix_nanos();
            match result {
                Ok(_) => self.status.update(|s| {
                    s.retention_last_run_unix_nano = Some(now);
                    s.retention_last_error = None;
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "ClickHouse retention pass failed; next try in an hour");
                    self.status.update(|s| {
                        s.retention_failures += 1;
                        s.retention_last_error = Some(e.to_string());
                    });
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dates_are_spliced() {
        assert!(is_day("2025-11-13"));
        for bad in [
            "2025-11-1",
            "2025-11-13'",
            "2025/11/13",
            "x025-11-13",
            "",
            "2025-11-13 ",
        ] {
            assert!(!is_day(bad), "{bad}");
        }
    }
}
