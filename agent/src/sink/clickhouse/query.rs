//! Reading records back (`egret records` with ClickHouse configured):
//! both tables, deduplicated with `FINAL`, as the local store returns them.
use super::row::{FlowRow, TransactionRow};
use super::{ClickHouseSink, SinkError};
use crate::config::ClickHouseConfig;
use crate::record::Record;

impl ClickHouseSink {
    /// Records from both tables, deduplicated (`FINAL`), ordered by start
    /// time. See [`query_records`].
    pub async fn query(
        &self,
        invocation_id: Option<&str>,
        since_ns: Option<i64>,
    ) -> Result<Vec<Record>, SinkError> {
        let mut out = Vec::new();
        let tx = self
            .select_table::<TransactionRow<'static>>(&self.tx_table, invocation_id, since_ns, |r| {
                r.into_record()
            })
            .await?;
        out.extend(tx);
        let flows = self
            .select_table::<FlowRow<'static>>(&self.flow_table, invocation_id, since_ns, |r| {
                r.into_record()
            })
            .await?;
        out.extend(flows);
        out.sort_by(|a, b| (a.start_ns(), a.id()).cmp(&(b.start_ns(), b.id())));
        Ok(out)
    }

    async fn select_table<R>(
        &self,
        table: &str,
        invocation_id: Option<&str>,
        since_ns: Option<i64>,
        convert: impl Fn(R::Value<'_>) -> Record,
    ) -> Result<Vec<Record>, SinkError>
    where
        R: ::clickhouse::RowRead,
    {
        // FINAL: collapse re-delivered copies not merged yet (module docs).
        let mut sql = format!("SELECT ?fields FROM {table} FINAL WHERE 1 = 1");
        if invocation_id.is_some() {
            sql.push_str(" AND invocation_id = ?");
        }
        if since_ns.is_some() {
            // Same rule as the local store (`records::matches`): records that
            // ended at or after `since`. No partition pruning on the start
            // day: a long-lived connection may have started days earlier.
            sql.push_str(" AND ifNull(egret_end_time_unix_nano, 0) >= ?");
        }
        sql.push_str(" ORDER BY egret_start_time_unix_nano, egret_record_id");
        let mut q = self.client.query(&sql);
        if let Some(id) = invocation_id {
            q = q.bind(id);
        }
        if let Some(since) = since_ns {
            q = q.bind(since);
        }
        let fut = async {
            let mut cursor = q.fetch::<R>()?;
            let mut out = Vec::new();
            while let Some(row) = cursor.next().await? {
                out.push(convert(row));
            }
            Ok::<_, ::clickhouse::error::Error>(out)
        };
        self.timed("query", fut).await
    }
}

/// `egret records` against ClickHouse: records of both tables (optionally
/// one invocation's, optionally those that ended at or after `since_ns`, as
/// `records::matches` does for the local store),
/// deduplicated, ordered by start time, with the same attribute names (and
/// value types) as the local store.
pub async fn query_records(
    cfg: &ClickHouseConfig,
    invocation_id: Option<&str>,
    since_ns: Option<i64>,
) -> Result<Vec<Record>, SinkError> {
    ClickHouseSink::new(cfg)?
        .query(invocation_id, since_ns)
        .await
}
