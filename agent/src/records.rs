//! `egret records`: reading records back for people and tools.
use std::io::Write;

use crate::{config::Config, record::Record, semconv as sc, store};

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] crate::sink::SinkError),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

/// Records from the local store, filtered, oldest first.
pub async fn load(
    cfg: &Config,
    invocation_id: Option<&str>,
    since_ns: Option<i64>,
) -> Result<Vec<Record>, RecordsError> {
    if let Some(ch) = &cfg.store.clickhouse {
        return Ok(crate::sink::query_records(ch, invocation_id, since_ns).await?);
    }
    let dir = cfg.store.spool_or_default(&cfg.node.state_dir).dir;
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for rec in store::read_records(&dir)? {
        let rec = rec?;
        if matches(&rec, invocation_id, since_ns) {
            out.push(rec);
        }
    }
    out.sort_by_key(Record::start_ns);
    Ok(out)
}

pub fn matches(rec: &Record, invocation_id: Option<&str>, since_ns: Option<i64>) -> bool {
    if let Some(id) = invocation_id {
        if rec.invocation_id() != Some(id) {
            return false;
        }
    }
    if let Some(since) = since_ns {
        if rec.end_ns() < since {
            return false;
        }
    }
    true
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
