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
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::clickhouse::{Client, Compression, Row};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{expand_env, Backoff, EnvError};
use crate::record::{now_unix_nanos, AttrValue, Record};
use crate::semconv as sc;
use crate::store::{Cursor, Position, StoreError};

/// ClickHouse sink configuration (embedded in the agent config as `clickhouse`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClickHouseConfig {
    /// HTTP(S) endpoint, e.g. `http://clickhouse:8123`.
    pub url: String,
    /// Database holding the `transactions` and `flows` tables.
    pub database: String,
    /// User name; `${ENV}` references are expanded.
    pub user: Option<String>,
    /// Password; `${ENV}` references are expanded (keep it in a Secret).
    pub password: Option<String>,
    /// Let the client validate rows against the server's schema. Needs a
    /// current server (`RowBinaryWithNamesAndTypes`); must be off for 18.x.
    pub validation: bool,
    /// Rows per INSERT (the spool batch size).
    pub batch_rows: usize,
    /// Longest time a record waits in a partial batch, e.g. `1s`, `500ms`.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub flush_interval: Duration,
    /// Cluster name: DDL runs `ON CLUSTER` and inserts go through
    /// `Distributed` tables.
    pub cluster: Option<String>,
    /// Timeout of one INSERT or query, e.g. `30s`.
    #[serde(with = "duration_str")]
    #[schemars(with = "String")]
    pub insert_timeout: Duration,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".to_owned(),
            database: "egret".to_owned(),
            user: None,
            password: None,
            validation: false,
            batch_rows: 10_000,
            flush_interval: Duration::from_secs(1),
            cluster: None,
            insert_timeout: Duration::from_secs(30),
        }
    }
}

mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// ClickHouse sink errors.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    #[error("clickhouse: {0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    #[error("clickhouse config: {0}")]
    Config(String),
    #[error("clickhouse config: {0}")]
    Env(#[from] EnvError),
    #[error("spool: {0}")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
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

// ---------------------------------------------------------------------------
// Row layout.

/// How an attribute is stored in its typed column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColKind {
    /// `String`; empty means absent (sorting-key and body columns).
    Text,
    /// `Int64`; 0 means absent (the start time, in the sorting key).
    Int0,
    Str,
    Int,
    Float,
    Bool,
    StrArr,
}

impl ColKind {
    pub fn sql_type(self) -> &'static str {
        match self {
            ColKind::Text => "String",
            ColKind::Int0 => "Int64",
            ColKind::Str => "Nullable(String)",
            ColKind::Int => "Nullable(Int64)",
            ColKind::Float => "Nullable(Float64)",
            ColKind::Bool => "Nullable(UInt8)",
            ColKind::StrArr => "Array(String)",
        }
    }
}

/// One typed column: its name, the attribute it stores, and how.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub attr: &'static str,
    pub kind: ColKind,
}

/// Value of `attr_types` entries.
const TYPE_STR: i8 = 1;
const TYPE_INT: i8 = 2;
const TYPE_FLOAT: i8 = 3;
const TYPE_BOOL: i8 = 4;
const TYPE_STR_ARRAY: i8 = 5;
const ATTR_TYPES_SQL: &str =
    "Array(Enum8('string' = 1, 'int' = 2, 'float' = 3, 'bool' = 4, 'string_array' = 5))";

/// Conversion between an attribute value and a typed column field.
trait ColValue<'a>: Sized {
    /// Stores `v` in the slot if it has the column's type; false otherwise
    /// (the attribute then goes to the generic arrays).
    fn store(v: &'a AttrValue, slot: &mut Self) -> bool;
    /// Sets the attribute on `r` if the column holds a value.
    fn load(self, attr: &'static str, r: &mut Record);
}

impl<'a> ColValue<'a> for Cow<'a, str> {
    fn store(v: &'a AttrValue, slot: &mut Self) -> bool {
        match v {
            AttrValue::Str(s) if !s.is_empty() => {
                *slot = Cow::Borrowed(s);
                true
            }
            _ => false,
        }
    }
    fn load(self, attr: &'static str, r: &mut Record) {
        if !self.is_empty() {
            r.set(attr, self.into_owned());
        }
    }
}

impl<'a> ColValue<'a> for i64 {
    fn store(v: &'a AttrValue, slot: &mut Self) -> bool {
        match v {
            AttrValue::Int(i) if *i != 0 => {
                *slot = *i;
                true
            }
            _ => false,
        }
    }
    fn load(self, attr: &'static str, r: &mut Record) {
        if self != 0 {
            r.set(attr, self);
        }
    }
}

impl<'a> ColValue<'a> for Option<Cow<'a, str>> {
    fn store(v: &'a AttrValue, slot: &mut Self) -> bool {
        match v {
            AttrValue::Str(s) => {
                *slot = Some(Cow::Borrowed(s));
                true
            }
            _ => false,
        }
    }
    fn load(self, attr: &'static str, r: &mut Record) {
        if let Some(v) = self {
            r.set(attr, v.into_owned());
        }
    }
}

macro_rules! scalar_col {
    ($t:ty, $variant:ident) => {
        impl<'a> ColValue<'a> for Option<$t> {
            fn store(v: &'a AttrValue, slot: &mut Self) -> bool {
                match v {
                    AttrValue::$variant(x) => {
                        *slot = Some(*x);
                        true
                    }
                    _ => false,
                }
            }
            fn load(self, attr: &'static str, r: &mut Record) {
                if let Some(v) = self {
                    r.set(attr, v);
                }
            }
        }
    };
}
scalar_col!(i64, Int);
scalar_col!(f64, Float);
scalar_col!(bool, Bool);

impl<'a> ColValue<'a> for Vec<Cow<'a, str>> {
    fn store(v: &'a AttrValue, slot: &mut Self) -> bool {
        match v {
            AttrValue::StrArray(a) if !a.is_empty() => {
                *slot = a.iter().map(|s| Cow::Borrowed(s.as_str())).collect();
                true
            }
            _ => false,
        }
    }
    fn load(self, attr: &'static str, r: &mut Record) {
        if !self.is_empty() {
            r.set(
                attr,
                self.into_iter().map(Cow::into_owned).collect::<Vec<_>>(),
            );
        }
    }
}

/// Rust field type of a column kind.
macro_rules! col_ty {
    ($l:lifetime, Text) => { Cow<$l, str> };
    ($l:lifetime, Int0) => { i64 };
    ($l:lifetime, Str) => { Option<Cow<$l, str>> };
    ($l:lifetime, Int) => { Option<i64> };
    ($l:lifetime, Float) => { Option<f64> };
    ($l:lifetime, Bool) => { Option<bool> };
    ($l:lifetime, StrArr) => { Vec<Cow<$l, str>> };
}

/// Defines a row struct, its column list (from which the DDL is generated,
/// so struct and table cannot drift apart) and the Record conversions.
macro_rules! table_row {
    (
        $(#[$meta:meta])*
        $row:ident, table = $table:literal, kind = $kind:path,
        [ $( $field:ident : $ck:ident = $attr:path ),* $(,)? ]
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Row, Serialize, Deserialize)]
        #[clickhouse(crate = "::clickhouse")]
        pub struct $row<'a> {
            pub egret_record_id: Cow<'a, str>,
            pub egret_start_time_unix_nano: i64,
            pub egret_end_time_unix_nano: Option<i64>,
            $( pub $field: col_ty!('a, $ck), )*
            pub attr_keys: Vec<Cow<'a, str>>,
            pub attr_values: Vec<Cow<'a, str>>,
            pub attr_types: Vec<i8>,
        }

        impl<'a> $row<'a> {
            /// Table name (without database).
            pub const TABLE: &'static str = $table;
            /// The `egret.record.kind` this table holds.
            pub const KIND: &'static str = $kind;
            /// Typed columns (the arrays and materialized columns aside).
            pub const COLUMNS: &'static [Column] = &[
                Column { name: "egret_record_id", attr: sc::RECORD_ID, kind: ColKind::Text },
                Column { name: "egret_start_time_unix_nano", attr: sc::START_TIME, kind: ColKind::Int0 },
                Column { name: "egret_end_time_unix_nano", attr: sc::END_TIME, kind: ColKind::Int },
                $( Column { name: stringify!($field), attr: $attr, kind: ColKind::$ck }, )*
            ];

            /// Borrows `r`'s values into a row; allocates only for
            /// non-string values that go to the generic arrays.
            pub fn from_record(r: &'a Record) -> Self {
                let mut row = Self::default();
                for (k, v) in r.iter() {
                    let stored = match k {
                        sc::RECORD_KIND => v.as_str() == Some(Self::KIND),
                        sc::RECORD_ID => ColValue::store(v, &mut row.egret_record_id),
                        sc::START_TIME => ColValue::store(v, &mut row.egret_start_time_unix_nano),
                        sc::END_TIME => ColValue::store(v, &mut row.egret_end_time_unix_nano),
                        $( $attr => ColValue::store(v, &mut row.$field), )*
                        _ => false,
                    };
                    if !stored {
                        push_generic(&mut row.attr_keys, &mut row.attr_values, &mut row.attr_types, k, v);
                    }
                }
                row
            }

            /// Rebuilds the record (same attribute names and types).
            pub fn into_record(self) -> Record {
                let mut r = Record::default();
                r.set(sc::RECORD_KIND, Self::KIND);
                ColValue::load(self.egret_record_id, sc::RECORD_ID, &mut r);
                ColValue::load(self.egret_start_time_unix_nano, sc::START_TIME, &mut r);
                ColValue::load(self.egret_end_time_unix_nano, sc::END_TIME, &mut r);
                $( ColValue::load(self.$field, $attr, &mut r); )*
                load_generic(self.attr_keys, self.attr_values, self.attr_types, &mut r);
                r
            }
        }
    };
}

table_row! {
    /// A row of `transactions` (one HTTP exchange).
    TransactionRow, table = "transactions", kind = sc::KIND_TRANSACTION,
    [
        invocation_id: Text = sc::INVOCATION_ID,
        agent_kind: Str = sc::AGENT_KIND,
        agent_namespace: Str = sc::AGENT_NAMESPACE,
        agent_name: Str = sc::AGENT_NAME,
        agent_uid: Str = sc::AGENT_UID,
        agent_revision: Str = sc::AGENT_REVISION,
        gen_ai_provider_name: Str = sc::GEN_AI_PROVIDER_NAME,
        gen_ai_system: Str = sc::GEN_AI_SYSTEM,
        gen_ai_operation_name: Str = sc::GEN_AI_OPERATION_NAME,
        gen_ai_request_model: Str = sc::GEN_AI_REQUEST_MODEL,
        gen_ai_response_model: Str = sc::GEN_AI_RESPONSE_MODEL,
        gen_ai_response_id: Str = sc::GEN_AI_RESPONSE_ID,
        gen_ai_response_finish_reasons: StrArr = sc::GEN_AI_RESPONSE_FINISH_REASONS,
        gen_ai_usage_input_tokens: Int = sc::GEN_AI_USAGE_INPUT_TOKENS,
        gen_ai_usage_output_tokens: Int = sc::GEN_AI_USAGE_OUTPUT_TOKENS,
        gen_ai_usage_cache_read_input_tokens: Int = sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        gen_ai_usage_cache_creation_input_tokens: Int = sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
        gen_ai_request_stream: Bool = sc::GEN_AI_REQUEST_STREAM,
        mcp_method_name: Str = sc::MCP_METHOD_NAME,
        mcp_session_id: Str = sc::MCP_SESSION_ID,
        gen_ai_tool_name: Str = sc::GEN_AI_TOOL_NAME,
        jsonrpc_request_id: Str = sc::JSONRPC_REQUEST_ID,
        http_request_method: Str = sc::HTTP_REQUEST_METHOD,
        http_response_status_code: Int = sc::HTTP_RESPONSE_STATUS_CODE,
        url_path: Str = sc::URL_PATH,
        server_address: Str = sc::SERVER_ADDRESS,
        server_port: Int = sc::SERVER_PORT,
        network_protocol_version: Str = sc::NETWORK_PROTOCOL_VERSION,
        error_type: Str = sc::ERROR_TYPE,
        egret_component: Str = sc::COMPONENT,
        egret_route_name: Str = sc::ROUTE_NAME,
        egret_route_matched: Bool = sc::ROUTE_MATCHED,
        egret_dst_name: Str = sc::DST_NAME,
        egret_req_bytes: Int = sc::REQ_BYTES,
        egret_resp_bytes: Int = sc::RESP_BYTES,
        egret_req_truncated: Bool = sc::REQ_TRUNCATED,
        egret_resp_truncated: Bool = sc::RESP_TRUNCATED,
        egret_body_bytes: Int = sc::BODY_BYTES,
        egret_body_truncated: Bool = sc::BODY_TRUNCATED,
        egret_body_usage_visible: Bool = sc::BODY_USAGE_VISIBLE,
        egret_body_request_rewritten: Bool = sc::BODY_REQUEST_REWRITTEN,
        egret_duration_ms: Float = sc::DURATION_MS,
        egret_ttfb_ms: Float = sc::TTFB_MS,
        egret_budget_denied: Bool = sc::BUDGET_DENIED,
        egret_budget_daily_used: Int = sc::BUDGET_DAILY_USED,
        egret_budget_daily_max: Int = sc::BUDGET_DAILY_MAX,
        egret_policy_denied: Bool = sc::POLICY_DENIED,
        egret_l4_bytes_sandbox_tx: Int = sc::L4_BYTES_SANDBOX_TX,
        egret_l4_bytes_sandbox_rx: Int = sc::L4_BYTES_SANDBOX_RX,
        egret_l4_bytes_upstream: Int = sc::L4_BYTES_UPSTREAM,
        egret_l4_bytes_downstream: Int = sc::L4_BYTES_DOWNSTREAM,
        egret_api_key_id: Str = sc::API_KEY_ID,
        egret_request_body: Text = sc::REQUEST_BODY,
        egret_response_body: Text = sc::RESPONSE_BODY,
        egret_request_body_b64: Bool = sc::REQUEST_BODY_B64,
        egret_response_body_b64: Bool = sc::RESPONSE_BODY_B64,
        egret_request_content_encoding: Str = sc::REQUEST_CONTENT_ENCODING,
        egret_response_content_encoding: Str = sc::RESPONSE_CONTENT_ENCODING,
        egret_request_body_decode_error: Str = sc::REQUEST_BODY_DECODE_ERROR,
        egret_response_body_decode_error: Str = sc::RESPONSE_BODY_DECODE_ERROR,
    ]
}

table_row! {
    /// A row of `flows` (one TCP connection, from the kernel's close event).
    FlowRow, table = "flows", kind = sc::KIND_FLOW,
    [
        invocation_id: Text = sc::INVOCATION_ID,
        agent_kind: Str = sc::AGENT_KIND,
        agent_namespace: Str = sc::AGENT_NAMESPACE,
        agent_name: Str = sc::AGENT_NAME,
        agent_uid: Str = sc::AGENT_UID,
        agent_revision: Str = sc::AGENT_REVISION,
        server_address: Str = sc::SERVER_ADDRESS,
        server_port: Int = sc::SERVER_PORT,
        network_protocol_version: Str = sc::NETWORK_PROTOCOL_VERSION,
        error_type: Str = sc::ERROR_TYPE,
        egret_component: Str = sc::COMPONENT,
        egret_route_name: Str = sc::ROUTE_NAME,
        egret_route_matched: Bool = sc::ROUTE_MATCHED,
        egret_dst_name: Str = sc::DST_NAME,
        egret_duration_ms: Float = sc::DURATION_MS,
        egret_policy_denied: Bool = sc::POLICY_DENIED,
        egret_l4_bytes_sandbox_tx: Int = sc::L4_BYTES_SANDBOX_TX,
        egret_l4_bytes_sandbox_rx: Int = sc::L4_BYTES_SANDBOX_RX,
        egret_l4_bytes_upstream: Int = sc::L4_BYTES_UPSTREAM,
        egret_l4_bytes_downstream: Int = sc::L4_BYTES_DOWNSTREAM,
    ]
}

/// The ClickHouse type of the column holding `attr` in the `transactions`
/// table (a superset of `flows`), if it has one. Producers should emit these
/// value types; a value of another type is kept in the generic arrays.
pub fn column_type(attr: &str) -> Option<&'static str> {
    TransactionRow::COLUMNS
        .iter()
        .find(|c| c.attr == attr)
        .map(|c| c.kind.sql_type())
}

fn push_generic<'a>(
    keys: &mut Vec<Cow<'a, str>>,
    values: &mut Vec<Cow<'a, str>>,
    types: &mut Vec<i8>,
    k: &'a str,
    v: &'a AttrValue,
) {
    let (value, ty) = match v {
        AttrValue::Str(s) => (Cow::Borrowed(s.as_str()), TYPE_STR),
        AttrValue::Int(i) => (Cow::Owned(i.to_string()), TYPE_INT),
        // Display of f64 is the shortest text that parses back exactly.
        AttrValue::Float(f) => (Cow::Owned(f.to_string()), TYPE_FLOAT),
        AttrValue::Bool(b) => (Cow::Borrowed(if *b { "true" } else { "false" }), TYPE_BOOL),
        AttrValue::StrArray(a) => (
            Cow::Owned(serde_json::to_string(a).unwrap_or_else(|_| "[]".to_owned())),
            TYPE_STR_ARRAY,
        ),
    };
    keys.push(Cow::Borrowed(k));
    values.push(value);
    types.push(ty);
}

fn load_generic(keys: Vec<Cow<str>>, values: Vec<Cow<str>>, types: Vec<i8>, r: &mut Record) {
    for ((k, v), t) in keys.into_iter().zip(values).zip(types) {
        let parsed = match t {
            TYPE_INT => v.parse::<i64>().ok().map(AttrValue::Int),
            TYPE_FLOAT => v.parse::<f64>().ok().map(AttrValue::Float),
            TYPE_BOOL => match v.as_ref() {
                "true" => Some(AttrValue::Bool(true)),
                "false" => Some(AttrValue::Bool(false)),
                _ => None,
            },
            TYPE_STR_ARRAY => serde_json::from_str::<Vec<String>>(&v)
                .ok()
                .map(AttrValue::StrArray),
            _ => None,
        };
        let value = parsed.unwrap_or_else(|| AttrValue::Str(v.into_owned()));
        r.set(k.into_owned(), value);
    }
}

// ---------------------------------------------------------------------------
// DDL.

const MATERIALIZED_COLUMNS: &[(&str, &str)] = &[
    (
        "event_time",
        "DateTime('UTC') MATERIALIZED toDateTime(intDiv(egret_start_time_unix_nano, 1000000000), 'UTC')",
    ),
    ("event_date", "Date MATERIALIZED toDate(event_time)"),
];

fn all_columns(columns: &[Column]) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = columns
        .iter()
        .map(|c| (c.name, c.kind.sql_type()))
        .collect();
    out.push(("attr_keys", "Array(String)"));
    out.push(("attr_values", "Array(String)"));
    out.push(("attr_types", ATTR_TYPES_SQL));
    out.extend_from_slice(MATERIALIZED_COLUMNS);
    out
}

/// Names and identifiers the schema uses (validated, already quoted).
#[derive(Clone, Debug)]
struct Names {
    db: String,
    on_cluster: String,
    cluster: Option<String>,
}

impl Names {
    fn new(cfg: &ClickHouseConfig) -> Result<Self, SinkError> {
        let ident = |what: &str, s: &str| -> Result<(), SinkError> {
            let ok = !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if ok {
                Ok(())
            } else {
                Err(SinkError::Config(format!(
                    "{what} {s:?} must be letters, digits, '_' or '-'"
                )))
            }
        };
        ident("database", &cfg.database)?;
        if let Some(c) = &cfg.cluster {
            ident("cluster", c)?;
        }
        Ok(Names {
            db: cfg.database.clone(),
            on_cluster: cfg
                .cluster
                .as_ref()
                .map(|c| format!(" ON CLUSTER `{c}`"))
                .unwrap_or_default(),
            cluster: cfg.cluster.clone(),
        })
    }

    /// The table inserts and queries use.
    fn table(&self, t: &str) -> String {
        format!("`{}`.`{t}`", self.db)
    }

    /// The table holding the data (the `_local` one in cluster mode).
    fn data_table(&self, t: &str) -> String {
        match self.cluster {
            Some(_) => format!("{t}_local"),
            None => t.to_owned(),
        }
    }
}

/// The statements creating the schema from scratch (no migrations). Exposed
/// for docs and tests.
pub fn schema_ddl(cfg: &ClickHouseConfig) -> Result<Vec<String>, SinkError> {
    let n = Names::new(cfg)?;
    let mut out = vec![format!(
        "CREATE DATABASE IF NOT EXISTS `{}`{}",
        n.db, n.on_cluster
    )];
    for (t, cols) in tables() {
        out.extend(create_table_ddl(&n, t, cols));
    }
    Ok(out)
}

fn tables() -> [(&'static str, &'static [Column]); 2] {
    [
        (TransactionRow::TABLE, TransactionRow::COLUMNS),
        (FlowRow::TABLE, FlowRow::COLUMNS),
    ]
}

fn create_table_ddl(n: &Names, t: &str, cols: &[Column]) -> Vec<String> {
    let body = all_columns(cols)
        .iter()
        .map(|(name, ty)| format!("    `{name}` {ty}"))
        .collect::<Vec<_>>()
        .join(",\n");
    let data = n.data_table(t);
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.`{data}`{oc} (\n{body}\n) \
         ENGINE = ReplacingMergeTree() \
         PARTITION BY event_date \
         ORDER BY (invocation_id, egret_start_time_unix_nano, egret_record_id)",
        db = n.db,
        oc = n.on_cluster
    )];
    if let Some(cluster) = &n.cluster {
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`{t}`{oc} AS `{db}`.`{data}` \
             ENGINE = Distributed(`{cluster}`, `{db}`, `{data}`, cityHash64(invocation_id))",
            db = n.db,
            oc = n.on_cluster
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// The sink.

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
    fn update(&self, f: impl FnOnce(&mut SinkStatus)) {
        f(&mut self.lock());
    }
    fn error(&self, e: &SinkError) {
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

/// The dead-letter file's name in the state directory.
pub const DEAD_LETTER_FILE: &str = "clickhouse-dead-letter.jsonl";
/// Largest dead-letter file; records beyond are counted, not written.
pub const DEAD_LETTER_MAX_BYTES: u64 = 64 << 20;

/// Data rejections of single records, with nothing of the batch accepted,
/// after which the batch counts as refused as a whole (schema or server
/// trouble, not bad records): retried, nothing set aside.
const MAX_REJECTED_BEFORE_ANY_ACCEPTED: usize = 8;

/// Where records the server keeps rejecting are set aside: JSON lines
/// (`{"time_unix_nano", "error", "record"}`), mode 0600, at most
/// `max_bytes`.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub path: std::path::PathBuf,
    pub max_bytes: u64,
}

/// Outcome of inserting a batch record by record where needed.
#[derive(Debug, Default)]
struct Isolated {
    inserted: usize,
    /// (index into the batch, the server's error).
    rejected: Vec<(usize, String)>,
}

/// Delivers spooled records to ClickHouse. See the module docs.
#[derive(Clone)]
pub struct ClickHouseSink {
    cfg: ClickHouseConfig,
    client: Client,
    names: Names,
    tx_table: String,
    flow_table: String,
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
            return Err(SinkError::Config("batchRows must be > 0".into()));
        }
        // No default database on the client: every statement is fully
        // qualified, so DDL works before the database exists.
        let mut client = Client::default()
            .with_url(cfg.url.as_str())
            .with_compression(Compression::Lz4)
            .with_validation(cfg.validation);
        if let Some(u) = &cfg.user {
            client = client.with_user(expand_env(u)?);
        }
        if let Some(p) = &cfg.password {
            client = client.with_password(expand_env(p)?);
        }
        Ok(ClickHouseSink {
            tx_table: names.table(TransactionRow::TABLE),
            flow_table: names.table(FlowRow::TABLE),
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
            Ok(v) => Err(SinkError::Internal(format!("healthcheck returned {v}"))),
            Err(e) => Err(e),
        }
    }

    /// Creates the database and tables if needed and adds missing columns.
    /// Idempotent; safe to run from several agents at once.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        let n = &self.names;
        self.exec(&format!(
            "CREATE DATABASE IF NOT EXISTS `{}`{}",
            n.db, n.on_cluster
        ))
        .await?;
        for (t, cols) in tables() {
            for sql in create_table_ddl(n, t, cols) {
                self.exec(&sql).await?;
            }
            let mut targets = vec![n.data_table(t)];
            if n.cluster.is_some() {
                targets.push(t.to_owned());
            }
            for table in targets {
                let existing: Vec<String> = self
                    .timed(
                        "migrate",
                        self.client
                            .query(
                                "SELECT name FROM system.columns WHERE database = ? AND table = ?",
                            )
                            .bind(n.db.as_str())
                            .bind(table.as_str())
                            .fetch_all::<String>(),
                    )
                    .await?;
                for (name, ty) in all_columns(cols) {
                    if existing.iter().any(|e| e == name) {
                        continue;
                    }
                    tracing::info!(table = %table, column = name, "adding ClickHouse column");
                    self.exec(&format!(
                        "ALTER TABLE `{}`.`{table}`{} ADD COLUMN `{name}` {ty}",
                        n.db, n.on_cluster
                    ))
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn exec(&self, sql: &str) -> Result<(), SinkError> {
        self.timed("DDL", self.client.query(sql).execute()).await
    }

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
        fn is_flow(r: &Record) -> bool {
            r.kind() == sc::KIND_FLOW
        }
        let t = Some(self.cfg.insert_timeout);
        let mut counts = InsertCounts::default();
        let flows = records.iter().filter(|r| is_flow(r)).count();

        if flows < records.len() {
            let mut ins = self
                .timed(
                    "INSERT",
                    self.client
                        .insert_unescaped::<TransactionRow<'static>>(&self.tx_table),
                )
                .await?
                .with_timeouts(t, t);
            for r in records {
                if !is_flow(r) {
                    ins.write(&TransactionRow::from_record(r)).await?;
                    counts.transactions += 1;
                }
            }
            ins.end().await?;
        }
        if flows > 0 {
            let mut ins = self
                .timed(
                    "INSERT",
                    self.client
                        .insert_unescaped::<FlowRow<'static>>(&self.flow_table),
                )
                .await?
                .with_timeouts(t, t);
            for r in records {
                if is_flow(r) {
                    ins.write(&FlowRow::from_record(r)).await?;
                    counts.flows += 1;
                }
            }
            ins.end().await?;
        }
        Ok(counts)
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
                .map_err(|e| SinkError::Internal(format!("spool reader task: {e}")))?;
                cursor = c;
                match res {
                    Ok(batch) if !batch.is_empty() => {
                        oldest_pending.get_or_insert_with(Instant::now);
                        pending.extend(batch);
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

/// Appends one JSON line per rejected record to the dead-letter file while
/// it stays under `max_bytes`; returns how many were written.
fn write_dead_letters(
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

/// Rows written by one [`ClickHouseSink::insert`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertCounts {
    pub transactions: usize,
    pub flows: usize,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn full_transaction() -> Record {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        for c in TransactionRow::COLUMNS {
            if r.get(c.attr).is_some() {
                continue;
            }
            let v: AttrValue = match c.kind {
                ColKind::Text | ColKind::Str => format!("v-{}", c.name).into(),
                ColKind::Int0 | ColKind::Int => AttrValue::Int(c.name.len() as i64 + 1000),
                ColKind::Float => AttrValue::Float(1.25 + c.name.len() as f64),
                ColKind::Bool => AttrValue::Bool(c.name.len() % 2 == 0),
                ColKind::StrArr => vec!["stop".to_owned(), "length".to_owned()].into(),
            };
            r.set(c.attr, v);
        }
        r.set(sc::PROCESS_PID, 4242i64);
        r.set(sc::L4_REDIRECTED, true);
        r.set(sc::TRACE_ID, "0af7651916cd43dd8448eb211c80319c");
        r.set("egret.test.float", 0.1);
        r.set("egret.test.array", vec!["a".to_owned(), "b\"c".to_owned()]);
        // Wrong type for a typed column: kept exactly, via the arrays.
        r.set(sc::DURATION_MS, 12i64);
        r
    }

    #[test]
    fn row_round_trip_is_exact() {
        let r = full_transaction();
        let row = TransactionRow::from_record(&r);
        assert_eq!(row.egret_duration_ms, None);
        assert!(row.attr_keys.iter().any(|k| k == sc::DURATION_MS));
        assert_eq!(row.clone().into_record(), r);

        let mut f = Record::new(sc::KIND_FLOW);
        f.set(sc::INVOCATION_ID, "inv");
        f.set(sc::L4_BYTES_SANDBOX_TX, 10u64);
        f.set(sc::SOCKET_COOKIE, 77u64);
        f.set(sc::START_TIME, 5i64);
        let row = FlowRow::from_record(&f);
        assert_eq!(row.egret_l4_bytes_sandbox_tx, Some(10));
        assert_eq!(row.attr_keys, vec![Cow::Borrowed(sc::SOCKET_COOKIE)]);
        assert_eq!(row.into_record(), f);
    }

    #[test]
    fn body_flags_have_typed_columns_per_direction() {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::REQUEST_BODY, "{\"model\":\"m\"}");
        r.set(sc::REQUEST_BODY_B64, false);
        r.set(sc::RESPONSE_BODY, "H4sI");
        r.set(sc::RESPONSE_BODY_B64, true);
        r.set(sc::RESPONSE_CONTENT_ENCODING, "gzip");
        r.set(sc::RESPONSE_BODY_DECODE_ERROR, "decode_failed");
        r.set(sc::REQUEST_CONTENT_ENCODING, "br");
        r.set(sc::REQUEST_BODY_DECODE_ERROR, "incomplete");
        let row = TransactionRow::from_record(&r);
        assert_eq!(row.egret_request_body_b64, Some(false));
        assert_eq!(row.egret_response_body_b64, Some(true));
        assert_eq!(row.egret_response_content_encoding.as_deref(), Some("gzip"));
        assert_eq!(row.egret_request_content_encoding.as_deref(), Some("br"));
        assert_eq!(
            row.egret_response_body_decode_error.as_deref(),
            Some("decode_failed")
        );
        assert_eq!(
            row.egret_request_body_decode_error.as_deref(),
            Some("incomplete")
        );
        assert!(row.attr_keys.is_empty(), "{:?}", row.attr_keys);
        assert_eq!(row.into_record(), r);
        assert_eq!(column_type(sc::RESPONSE_BODY_B64), Some("Nullable(UInt8)"));
        assert_eq!(
            column_type(sc::REQUEST_CONTENT_ENCODING),
            Some("Nullable(String)")
        );
    }

    #[test]
    fn unknown_kind_and_empty_values_survive() {
        let mut r = Record::new("mystery");
        r.set(sc::INVOCATION_ID, "");
        r.set(sc::START_TIME, 0i64);
        r.set(sc::GEN_AI_RESPONSE_FINISH_REASONS, Vec::<String>::new());
        let back = TransactionRow::from_record(&r).into_record();
        assert_eq!(back, r);
    }

    #[test]
    fn columns_match_semconv_names_and_are_unique() {
        for cols in [TransactionRow::COLUMNS, FlowRow::COLUMNS] {
            let mut names = std::collections::HashSet::new();
            for c in cols {
                assert_eq!(c.name, sc::column_name(c.attr), "{c:?}");
                assert!(names.insert(c.name), "duplicate {}", c.name);
            }
        }
        for c in FlowRow::COLUMNS {
            assert_eq!(column_type(c.attr), Some(c.kind.sql_type()), "{c:?}");
        }
        assert_eq!(
            column_type(sc::GEN_AI_USAGE_INPUT_TOKENS),
            Some("Nullable(Int64)")
        );
        assert_eq!(column_type(sc::PROCESS_PID), None);
    }

    #[test]
    fn ddl_uses_only_old_server_types() {
        let cfg = ClickHouseConfig::default();
        let ddl = schema_ddl(&cfg).unwrap().join("\n");
        for banned in [
            "Map(",
            "DateTime64",
            "JSON",
            "Bool ",
            "LowCardinality",
            "CODEC",
            "TTL",
        ] {
            assert!(!ddl.contains(banned), "{banned} in {ddl}");
        }
        assert!(ddl.contains("ReplacingMergeTree()"));
        assert!(ddl.contains("`egret`.`transactions`"));

        let cfg = ClickHouseConfig {
            cluster: Some("main".into()),
            ..ClickHouseConfig::default()
        };
        let ddl = schema_ddl(&cfg).unwrap();
        assert!(ddl[0].ends_with("ON CLUSTER `main`"));
        assert!(ddl
            .iter()
            .any(|s| s.contains("`egret`.`flows_local` ON CLUSTER `main`")));
        assert!(ddl.iter().any(|s| s.contains(
            "Distributed(`main`, `egret`, `transactions_local`, cityHash64(invocation_id))"
        )));
        let bad = ClickHouseConfig {
            database: "x`; DROP".into(),
            ..ClickHouseConfig::default()
        };
        assert!(matches!(schema_ddl(&bad), Err(SinkError::Config(_))));
    }

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

    #[test]
    fn config_parses_with_defaults_and_durations() {
        let cfg: ClickHouseConfig = serde_json::from_str(
            r#"{"url": "http://ch:8123", "password": "${CH_PW}", "flushInterval": "250ms"}"#,
        )
        .unwrap();
        assert_eq!(cfg.database, "egret");
        assert_eq!(cfg.batch_rows, 10_000);
        assert_eq!(cfg.flush_interval, Duration::from_millis(250));
        assert_eq!(cfg.insert_timeout, Duration::from_secs(30));
        assert!(!cfg.validation);
        assert!(serde_json::from_str::<ClickHouseConfig>(r#"{"flushInterval": "soon"}"#).is_err());
        assert!(serde_json::from_str::<ClickHouseConfig>(r#"{"nope": 1}"#).is_err());
        let text = serde_json::to_string(&schemars::schema_for!(ClickHouseConfig)).unwrap();
        assert!(
            text.contains("flushInterval") && text.contains("batchRows"),
            "{text}"
        );
        // A missing ${ENV} is a clear config error.
        let err = ClickHouseSink::new(&ClickHouseConfig {
            password: Some("${EGRET_TEST_SURELY_UNSET}".into()),
            ..cfg
        })
        .unwrap_err();
        assert!(err.to_string().contains("EGRET_TEST_SURELY_UNSET"), "{err}");
    }
}
