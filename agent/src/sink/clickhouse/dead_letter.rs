//! The dead-letter file: records ClickHouse rejects on their own, set
//! aside (fsync'd) so the cursor can move past them (see "Rejected records"
//! in the module docs).
use crate::record::{now_unix_nanos, Record};

/// The dead-letter file's name in the state directory.
pub const DEAD_LETTER_FILE: &str = "clickhouse-dead-letter.jsonl";
/// Largest dead-letter file; records beyond are counted, not written.
pub const DEAD_LETTER_MAX_BYTES: u64 = 64 << 20;

/// Where records the server keeps rejecting are set aside: JSON lines
/// (`{"time_unix_nano", "error", "record"}`), mode 0600, at most
/// `max_bytes`.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub path: std::path::PathBuf,
    pub max_bytes: u64,
}

/// Appends one JSON line per rejected record to the dead-letter file while
/// it stays under `max_bytes`; returns how many were written.
pub(super) fn write_dead_letters(
    dl: &DeadLetter,
    records: &[&Record],
    rejected: &[(usize, String)],
) -> std::io::Result<usize> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&dl.path)?;
    let mut len = f.metadata()?.len();
    let mut written = 0;
    let now = now_unix_nanos();
    for (i, err) in rejected {
        let mut line = serde_json::to_vec(&serde_json::json!({
            "time_unix_nano": now,
            "error": err,
            "record": records[*i],
        }))
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        if len + line.len() as u64 > dl.max_bytes {
            continue;
        }
        f.write_all(&line)?;
        len += line.len() as u64;
        written += 1;
    }
    f.sync_data()?;
    Ok(written)
}
