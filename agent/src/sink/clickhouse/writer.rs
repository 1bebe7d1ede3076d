//! Delivery: spool batches → INSERTs, commit after the server's ack,
//! retry with backoff, and the splitting of batches the server rejects for
//! their data down to the records it refuses.
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::dead_letter::write_dead_letters;
use super::row::{FlowRow, InvocationRow, TransactionRow};
use super::status::SinkState;
use super::{ClickHouseSink, SinkError};
use crate::config::ContentMode;
use crate::record::{now_unix_nanos, Record};
use crate::semconv as sc;
use crate::sink::Backoff;
use crate::store::{Cursor, Position};

/// Data rejections of single records, with nothing of the batch accepted,
/// after which the batch counts as refused as a whole (schema or server
/// trouble, not bad records): retried, nothing set aside.
const MAX_REJECTED_BEFORE_ANY_ACCEPTED: usize = 8;

/// The setting making an INSERT into a `Distributed` table synchronous
/// (its current name, `distributed_foreground_insert`, is an alias only
/// newer servers know; this one is understood by 18.16 and current ones).
const INSERT_DISTRIBUTED_SYNC: &str = "insert_distributed_sync";

/// Outcome of inserting a batch record by record where needed.
#[derive(Debug, Default)]
struct Isolated {
    inserted: usize,
    /// (index into the batch, the server's error).
    rejected: Vec<(usize, String)>,
}

/// Rows written by one [`ClickHouseSink::insert`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertCounts {
    pub transactions: usize,
    pub flows: usize,
    pub invocations: usize,
}

impl ClickHouseSink {
    /// Inserts `records` (transactions and flows; other kinds go to
    /// `transactions` with their kind kept in the arrays), waiting for the
    /// server's acknowledgement. Re-inserting the same records is harmless
    /// (see "Exactly once" in the module docs).
    pub async fn insert<'r>(
        &self,
        records: impl IntoIterator<Item = &'r Record>,
    ) -> Result<InsertCounts, SinkError> {
        let refs: Vec<&Record> = records.into_iter().collect();
        self.insert_refs(&refs).await
    }

    async fn insert_refs(&self, records: &[&Record]) -> Result<InsertCounts, SinkError> {
        let t = Some(self.cfg.insert_timeout);
        // One INSERT per table, of the records of its kind (none: no
        // statement); how many.
        macro_rules! insert_kind {
            ($row:ident, $table:expr, $mine:expr) => {{
                let mine = $mine;
                let n = records.iter().filter(|r| mine(r)).count();
                if n > 0 {
                    let mut ins = self.insert_settings(
                        self.timed(
                            "INSERT",
                            self.client.insert_unescaped::<$row<'static>>($table),
                        )
                        .await?
                        .with_timeouts(t, t),
                    );
                    for r in records.iter().filter(|r| mine(r)) {
                        ins.write(&$row::from_record(r)).await?;
                    }
                    ins.end().await?;
                }
                n
            }};
        }
        Ok(InsertCounts {
            transactions: insert_kind!(TransactionRow, &self.tx_table, |r: &Record| {
                r.kind() != sc::KIND_FLOW && r.kind() != sc::KIND_INVOCATION
            }),
            flows: insert_kind!(FlowRow, &self.flow_table, |r: &Record| r.kind()
                == sc::KIND_FLOW),
            invocations: insert_kind!(InvocationRow, &self.inv_table, |r: &Record| r.kind()
                == sc::KIND_INVOCATION),
        })
    }

    /// Per-INSERT settings: in cluster mode the `Distributed` table
    /// forwards the rows to their shards before answering (see "Cluster"
    /// in the module docs for why).
    fn insert_settings<T>(
        &self,
        ins: ::clickhouse::insert::Insert<T>,
    ) -> ::clickhouse::insert::Insert<T> {
        if self.names.is_cluster() {
            ins.with_setting(INSERT_DISTRIBUTED_SYNC, "1")
        } else {
            ins
        }
    }

    /// The delivery loop: migrate, then read batches from `cursor`, insert,
    /// commit after the ack; on failure keep the batch and retry with
    /// backoff. Returns when `shutdown` fires (after one last flush attempt)
    /// or on an unrecoverable spool error. Open the cursor with
    /// [`CURSOR_NAME`] before the spool's first append.
    pub async fn run(
        self,
        mut cursor: Cursor,
        shutdown: CancellationToken,
    ) -> Result<(), SinkError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut appended = cursor.subscribe();

        // Schema first: nothing can be inserted without it.
        loop {
            match self.migrate().await {
                Ok(()) => {
                    self.status.update(|s| s.state = SinkState::Connected);
                    break;
                }
                Err(e) => {
                    self.note_failure(&e, "ClickHouse schema migration failed");
                    if self.sleep_or_shutdown(&mut backoff, &shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
        backoff.reset();
        if self.cfg.retention.is_some() {
            tokio::spawn(self.clone().retention_loop(shutdown.child_token()));
        }

        let batch_rows = self.cfg.batch_rows;
        let mut pending: Vec<(Position, Record)> = Vec::with_capacity(batch_rows.min(100_000));
        let mut oldest_pending: Option<Instant> = None;
        loop {
            if pending.len() < batch_rows {
                let want = batch_rows - pending.len();
                let (c, res) = tokio::task::spawn_blocking(move || {
                    let r = cursor.next_batch(want);
                    (cursor, r)
                })
                .await
                .map_err(SinkError::ReaderTask)?;
                cursor = c;
                match res {
                    Ok(batch) if !batch.is_empty() => {
                        oldest_pending.get_or_insert_with(Instant::now);
                        // `store.clickhouse.content`: the one content filter
                        // (the spool's own mode already bounds what is read).
                        let content = self.cfg.content;
                        pending.extend(batch.into_iter().map(|(p, mut r)| {
                            if content != ContentMode::Full {
                                r.retain(|k| content.keeps(k));
                            }
                            (p, r)
                        }));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let e = SinkError::Store(e);
                        tracing::error!(error = %e, "cannot read the spool");
                        if self.sleep_or_shutdown(&mut backoff, &shutdown).await {
                            return Ok(());
                        }
                        continue;
                    }
                }
                self.status
                    .update(|s| s.pending_rows = pending.len() as u64);
            }

            let due = pending.len() >= batch_rows
                || oldest_pending.is_some_and(|t| t.elapsed() >= self.cfg.flush_interval);
            if !due {
                let wait = match oldest_pending {
                    Some(t) => self.cfg.flush_interval.saturating_sub(t.elapsed()),
                    None => self.cfg.flush_interval,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        if !pending.is_empty() {
                            // Best effort; what is not acknowledged stays spooled.
                            let _ = self.deliver(&mut cursor, &mut pending).await;
                        }
                        return Ok(());
                    }
                    changed = appended.changed() => {
                        if changed.is_err() {
                            // Writer gone: fall back to polling.
                            tokio::time::sleep(wait).await;
                        }
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }

            // Flush; on failure keep the batch and retry it after a backoff,
            // topped up with what arrived meanwhile (so a record the server
            // rejects can be told apart from a server rejecting everything).
            match self.deliver(&mut cursor, &mut pending).await {
                Ok(()) => {
                    oldest_pending = None;
                    backoff.reset();
                }
                Err(e) => {
                    self.note_failure(&e, "ClickHouse insert failed; will retry");
                    self.status.update(|s| s.retries += 1);
                    if self.sleep_or_shutdown(&mut backoff, &shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Inserts `pending`, then commits the cursor past it and clears it.
    async fn deliver(
        &self,
        cursor: &mut Cursor,
        pending: &mut Vec<(Position, Record)>,
    ) -> Result<(), SinkError> {
        let Some(&(last, _)) = pending.last() else {
            return Ok(());
        };
        let refs: Vec<&Record> = pending.iter().map(|(_, r)| r).collect();
        let isolated = match self.insert_refs(&refs).await {
            Ok(_) => Isolated {
                inserted: refs.len(),
                rejected: Vec::new(),
            },
            Err(e) if e.rejects_data() => self.isolate(&refs, e).await?,
            Err(e) => return Err(e),
        };
        // Set aside (durably) before the cursor moves past them.
        let overflow = self.set_aside(&refs, &isolated.rejected);
        drop(refs);
        let rows = isolated.inserted as u64;
        let rejected = isolated.rejected.len() as u64;
        pending.clear();
        // The commit is small (one tiny file + fsyncs). If it fails the rows
        // are in ClickHouse anyway: a later commit or a re-delivery after
        // restart (deduplicated) covers it.
        if let Err(e) = cursor.commit(last) {
            tracing::warn!(error = %e, "cannot persist the ClickHouse spool cursor");
        }
        tracing::debug!(rows, rejected, "inserted into ClickHouse");
        self.status.update(|s| {
            s.state = SinkState::Connected;
            s.rows_inserted += rows;
            s.batches_inserted += 1;
            s.pending_rows = 0;
            s.last_insert_unix_nano = Some(now_unix_nanos());
            s.dead_lettered += rejected;
            s.dead_letter_overflow += overflow;
        });
        Ok(())
    }

    /// After the server rejected `records` for their data (`first`): splits
    /// the batch in halves, recursively, inserting the parts it accepts,
    /// down to the single records it rejects on their own. A retryable
    /// error stops it (`Err`: the batch is retried; what was inserted is
    /// deduplicated on re-delivery). If nothing at all is accepted the
    /// batch is not a few bad records but the server or the schema
    /// refusing everything: `Err(first)`, nothing is set aside.
    async fn isolate(&self, records: &[&Record], first: SinkError) -> Result<Isolated, SinkError> {
        let n = records.len();
        if n < 2 {
            return Err(first);
        }
        let mut out = Isolated::default();
        let mut todo = vec![(n / 2, n), (0, n / 2)];
        while let Some((lo, hi)) = todo.pop() {
            match self.insert_refs(&records[lo..hi]).await {
                Ok(_) => out.inserted += hi - lo,
                Err(e) if e.rejects_data() => {
                    if hi - lo == 1 {
                        out.rejected.push((lo, e.to_string()));
                        if out.inserted == 0
                            && out.rejected.len() >= MAX_REJECTED_BEFORE_ANY_ACCEPTED
                        {
                            return Err(first);
                        }
                    } else {
                        let mid = lo + (hi - lo) / 2;
                        todo.push((mid, hi));
                        todo.push((lo, mid));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if out.inserted == 0 {
            return Err(first);
        }
        out.rejected.sort_unstable_by_key(|(i, _)| *i);
        Ok(out)
    }

    /// Writes the rejected records to the dead-letter file (fsync'd) and
    /// logs each; returns how many could not be written (counted as
    /// overflow: file full, no file configured, or an I/O error).
    fn set_aside(&self, records: &[&Record], rejected: &[(usize, String)]) -> u64 {
        if rejected.is_empty() {
            return 0;
        }
        for (i, err) in rejected {
            tracing::warn!(
                record_id = records[*i].id(),
                error = %err,
                "ClickHouse rejects this record; set aside in the dead-letter file and skipped"
            );
        }
        let Some(dl) = &self.dead_letter else {
            return rejected.len() as u64;
        };
        match write_dead_letters(dl, records, rejected) {
            Ok(written) => (rejected.len() - written) as u64,
            Err(e) => {
                tracing::error!(path = %dl.path.display(), error = %e,
                    "cannot write the ClickHouse dead-letter file; rejected records are lost (counted)");
                rejected.len() as u64
            }
        }
    }

    fn note_failure(&self, e: &SinkError, msg: &'static str) {
        let first = self.status.get().last_error.as_deref() != Some(&e.to_string());
        if first {
            tracing::warn!(error = %e, "{msg}");
        } else {
            tracing::debug!(error = %e, "{msg}");
        }
        self.status.error(e);
    }

    /// Sleeps for the next backoff delay; true if shutdown fired meanwhile.
    async fn sleep_or_shutdown(&self, backoff: &mut Backoff, shutdown: &CancellationToken) -> bool {
        let d = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}
