//! `egret records`: reading records back for people and tools.
use std::io::Write;

use crate::{
    config::Config,
    record::{Filter, Record},
    semconv as sc, store,
};

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] crate::sink::SinkError),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

/// Records `filter` matches, from ClickHouse when configured, else the
/// local store; oldest first (by start time).
pub async fn load(cfg: &Config, filter: &Filter) -> Result<Vec<Record>, RecordsError> {
    if let Some(ch) = &cfg.store.clickhouse {
        return Ok(crate::sink::query_records(ch, filter).await?);
    }
    let dir = cfg.store.spool_or_default(&cfg.node.state_dir).dir;
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for rec in store::read_records(&dir)? {
        let rec = rec?;
        if filter.matches(&rec) {
            out.push(rec);
        }
    }
    out.sort_by(|a, b| (a.start_ns(), a.id()).cmp(&(b.start_ns(), b.id())));
    Ok(out)
}

/// The newest `limit` of `recs` (sorted oldest first), still oldest first.
pub fn keep_last(recs: &mut Vec<Record>, limit: Option<usize>) {
    if let Some(n) = limit {
        let cut = recs.len().saturating_sub(n);
        recs.drain(..cut);
    }
}

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns, one line per record.
    Table,
    /// One JSON array of record objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// Prints `recs` as `output` says (`Json`: the array, so `--follow` uses
/// `Ndjson` or `Table` for what comes later).
pub fn print(out: &mut impl Write, recs: &[Record], output: Output) -> Result<(), RecordsError> {
    match output {
        Output::Table => print_table(out, recs),
        Output::Ndjson => print_json(out, recs),
        Output::Json => {
            write!(out, "[")?;
            for (i, r) in recs.iter().enumerate() {
                if i > 0 {
                    write!(out, ",")?;
                }
                write!(out, "\n{}", r.to_json_line())?;
            }
            writeln!(out, "\n]")?;
            Ok(())
        }
    }
}

/// Prints, then keeps printing records as they are written (`--follow`):
/// every `interval` the store is read again for records that `filter`
/// matches and that ended after the last one printed (ids already printed
/// are skipped), until `stop` resolves. Table output prints the header
/// once; NDJSON one line per record.
pub async fn follow(
    cfg: &Config,
    filter: &Filter,
    output: Output,
    interval: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), RecordsError> {
    let mut out = std::io::stdout().lock();
    let mut seen = std::collections::HashSet::new();
    let mut f = filter.clone();
    let mut first = true;
    tokio::pin!(stop);
    loop {
        let recs = load(cfg, &f).await?;
        let fresh: Vec<Record> = recs
            .into_iter()
            .filter(|r| !seen.contains(r.id()))
            .collect();
        if first && output == Output::Table {
            print_header(&mut out)?;
        }
        first = false;
        for r in &fresh {
            match output {
                Output::Table => print_row(&mut out, r)?,
                Output::Json | Output::Ndjson => writeln!(out, "{}", r.to_json_line())?,
            }
            seen.insert(r.id().to_owned());
            // Only records that end later can be new: read less next time
            // (a second of slack for records written out of order).
            let since = r.end_ns().saturating_sub(1_000_000_000);
            f.since_ns = Some(f.since_ns.map_or(since, |s| s.max(since)));
        }
        out.flush()?;
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

pub fn print_json(out: &mut impl Write, recs: &[Record]) -> Result<(), RecordsError> {
    for r in recs {
        writeln!(out, "{}", r.to_json_line())?;
    }
    Ok(())
}

fn fmt_time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn print_table(out: &mut impl Write, recs: &[Record]) -> Result<(), RecordsError> {
    print_header(out)?;
    for r in recs {
        print_row(out, r)?;
    }
    Ok(())
}

pub fn print_header(out: &mut impl Write) -> Result<(), RecordsError> {
    writeln!(
        out,
        "{:<24} {:<11} {:<36} {:<28} {:>9} {:>9} {:<22} {:<6} {:>7} {:>7}",
        "END",
        "KIND",
        "INVOCATION",
        "DESTINATION",
        "TX",
        "RX",
        "MODEL",
        "STREAM",
        "IN_TOK",
        "OUT_TOK"
    )?;
    Ok(())
}

/// One line per record: time, kind, invocation, destination, the
/// sandbox's wire bytes (TX/RX), model, tokens.
pub fn print_row(out: &mut impl Write, r: &Record) -> Result<(), RecordsError> {
    {
        let dst = format!(
            "{}:{}",
            r.get_str(sc::DST_NAME)
                .or_else(|| r.get_str(sc::SERVER_ADDRESS))
                .unwrap_or("-"),
            r.get_i64(sc::SERVER_PORT).unwrap_or(0)
        );
        let num = |k: &str| r.get_i64(k).map_or("-".to_owned(), |v| v.to_string());
        // Bytes the sandbox sent and received on the wire: a flow's
        // whole connection, a transaction's window of it (request and
        // response as TLS records; see docs/attributes.md).
        let (tx, rx) = (num(sc::L4_BYTES_SANDBOX_TX), num(sc::L4_BYTES_SANDBOX_RX));
        writeln!(
            out,
            "{:<24} {:<11} {:<36} {:<28} {:>9} {:>9} {:<22} {:<6} {:>7} {:>7}",
            fmt_time(r.end_ns()),
            r.kind(),
            r.invocation_id().unwrap_or("-"),
            dst,
            tx,
            rx,
            r.get_str(sc::GEN_AI_RESPONSE_MODEL)
                .or_else(|| r.get_str(sc::GEN_AI_REQUEST_MODEL))
                .unwrap_or("-"),
            match r.get_bool(sc::GEN_AI_REQUEST_STREAM) {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            num(sc::GEN_AI_USAGE_INPUT_TOKENS),
            num(sc::GEN_AI_USAGE_OUTPUT_TOKENS),
        )?;
    }
    Ok(())
}
