//! Reading records back (`egret records` with ClickHouse configured):
//! every table, deduplicated with `FINAL`, as the local store returns them.
use super::row::{FlowRow, InvocationRow, TransactionRow};
use super::{ClickHouseSink, SinkError};
use crate::config::ClickHouseConfig;
use crate::record::{Filter, Record};

impl ClickHouseSink {
    /// Records from both tables, deduplicated (`FINAL`), ordered by start
    /// time, that `filter` matches. See [`query_records`].
    pub async fn query(&self, filter: &Filter) -> Result<Vec<Record>, SinkError> {
        let mut out = Vec::new();
        if filter
            .kind
            .as_deref()
            .is_none_or(|k| k == crate::semconv::KIND_TRANSACTION)
        {
            let tx = self
                .select_table::<TransactionRow<'static>>(&self.tx_table, filter, |r| {
                    r.into_record()
                })
                .await?;
            out.extend(tx);
        }
        if filter
            .kind
            .as_deref()
            .is_none_or(|k| k == crate::semconv::KIND_FLOW)
        {
            let flows = self
                .select_table::<FlowRow<'static>>(&self.flow_table, filter, |r| r.into_record())
                .await?;
            out.extend(flows);
        }
        if filter
            .kind
            .as_deref()
            .is_none_or(|k| k == crate::semconv::KIND_INVOCATION)
        {
            let invocations = self
                .select_table::<InvocationRow<'static>>(&self.inv_table, filter, |r| {
                    r.into_record()
                })
                .await?;
            out.extend(invocations);
        }
        // The invocation and the time bounds are in the SQL; the other
        // fields are matched here, on the records as read back (the same
        // rule as the local store's).
        out.retain(|r| filter.matches(r));
        out.sort_by(|a, b| (a.start_ns(), a.id()).cmp(&(b.start_ns(), b.id())));
        Ok(out)
    }

    async fn select_table<R>(
        &self,
        table: &str,
        filter: &Filter,
        convert: impl Fn(R::Value<'_>) -> Record,
    ) -> Result<Vec<Record>, SinkError>
    where
        R: ::clickhouse::RowRead,
    {
        // FINAL: collapse re-delivered copies not merged yet (module docs).
        let (invocation_id, since_ns, until_ns) = (
            filter.invocation_id.as_deref(),
            filter.since_ns,
            filter.until_ns,
        );
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
        if until_ns.is_some() {
            sql.push_str(" AND egret_start_time_unix_nano < ?");
        }
        sql.push_str(" ORDER BY egret_start_time_unix_nano, egret_record_id");
        let mut q = self.client.query(&sql);
        if let Some(id) = invocation_id {
            q = q.bind(id);
        }
        if let Some(since) = since_ns {
            q = q.bind(since);
        }
        if let Some(until) = until_ns {
            q = q.bind(until);
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

/// `egret records` against ClickHouse: the records of both tables that
/// `filter` matches (as [`Filter::matches`] does for the local store),
/// deduplicated, ordered by start time, with the same attribute names (and
/// value types) as the local store.
pub async fn query_records(
    cfg: &ClickHouseConfig,
    filter: &Filter,
) -> Result<Vec<Record>, SinkError> {
    ClickHouseSink::new(cfg)?.query(filter).await
}
