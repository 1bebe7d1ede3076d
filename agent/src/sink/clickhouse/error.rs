//! What can go wrong talking to ClickHouse, and which failures are about
//! the rows sent (split the batch) rather than the server (retry it).
use std::time::Duration;

use crate::config::ExpandError;
use crate::store::StoreError;

/// ClickHouse sink errors.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    #[error("clickhouse: {0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    #[error("clickhouse config: {0}")]
    Config(#[from] InvalidConfig),
    #[error("clickhouse config: {0}")]
    Env(#[from] ExpandError),
    #[error("spool: {0}")]
    Store(#[from] StoreError),
    #[error("internal: spool reader task: {0}")]
    ReaderTask(#[source] tokio::task::JoinError),
    #[error("internal: healthcheck returned {0}")]
    Healthcheck(u8),
}

/// A `store.clickhouse` value the sink cannot use (checked when it starts).
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    #[error("{what} {value:?} must be letters, digits, '_' or '-'")]
    Identifier { what: &'static str, value: String },
    #[error("batchRows must be > 0")]
    ZeroBatchRows,
    #[error("retention {0:?} is shorter than a day (records are kept and dropped by whole days)")]
    RetentionTooShort(Duration),
}

/// ClickHouse error codes that are about the data sent, not the server or
/// the schema: the same rows fail again, other rows go through. Checked
/// against 18.16 (which answers HTTP 500 for all of them, so the status
/// cannot tell) and current servers.
const DATA_ERROR_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    128, // TOO_LARGE_ARRAY_SIZE
    131, // TOO_LARGE_STRING_SIZE
    190, // SIZES_OF_ARRAYS_DOESNT_MATCH
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (a throwIf() column guard)
    469, // VIOLATED_CONSTRAINT (a CHECK constraint, current servers)
];

/// The `Code: N` of a ClickHouse exception text (`Code: 395, e.displayText()
/// = ...` on 18.16, `Code: 395. DB::Exception: ...` on current servers).
fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl SinkError {
    /// The server refused the rows themselves (a type, parse or check
    /// error; too many partitions in one block): retrying the same batch
    /// cannot succeed, a smaller one may. Connection failures, timeouts and
    /// server-side trouble (overload, read-only, unknown table) are not.
    pub fn rejects_data(&self) -> bool {
        let SinkError::ClickHouse(::clickhouse::error::Error::BadResponse(text)) = self else {
            return false;
        };
        text.contains("Too many partitions for single INSERT block")
            || exception_code(text).is_some_and(|c| DATA_ERROR_CODES.contains(&c))
    }

    /// Connection-level failure (server unreachable) rather than a server-side error.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            SinkError::ClickHouse(::clickhouse::error::Error::Network(_))
                | SinkError::ClickHouse(::clickhouse::error::Error::TimedOut)
                | SinkError::Timeout(..)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rejections_are_told_from_server_trouble() {
        let bad =
            |t: &str| SinkError::ClickHouse(::clickhouse::error::Error::BadResponse(t.into()));
        // 18.16 and current servers word it differently.
        for t in [
            "Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, e.what() = DB::Exception",
            "Code: 469. DB::Exception: Constraint `c` for table t is violated. (VIOLATED_CONSTRAINT)",
            "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS)",
            "Code: 53, e.displayText() = DB::Exception: Type mismatch",
        ] {
            assert!(bad(t).rejects_data(), "{t}");
        }
        for t in [
            "Code: 252, e.displayText() = DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts",
            "Code: 60, e.displayText() = DB::Exception: Table egret.transactions doesn't exist",
            "Code: 16, e.displayText() = DB::Exception: No such column foo in table",
            "Code: 241, e.displayText() = DB::Exception: Memory limit (total) exceeded",
            "500 Internal Server Error",
            "Code: 3950",
        ] {
            assert!(!bad(t).rejects_data(), "{t}");
        }
        assert!(!SinkError::Timeout("INSERT", Duration::from_secs(1)).rejects_data());
        assert_eq!(exception_code("Code: 395, e"), Some(395));
        assert_eq!(exception_code("Code: 395. DB"), Some(395));
        assert_eq!(exception_code("nothing"), None);
    }
}
