//! Row layout: one typed column per well-known attribute, the rest in
//! parallel arrays, and the exact conversion between a [`Record`] and a row
//! of `transactions` or `flows` (see "Schema" in the module docs).
use std::borrow::Cow;

use ::clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::record::{AttrValue, Record};
use crate::semconv as sc;

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
pub(super) const ATTR_TYPES_SQL: &str =
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
                // The generic arrays in name order (the record's own order
                // is by length: `record::Record`).
                let mut generic = Vec::new();
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
                        generic.push((k, v));
                    }
                }
                generic.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (k, v) in generic {
                    push_generic(&mut row.attr_keys, &mut row.attr_values, &mut row.attr_types, k, v);
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

table_row! {
    /// A row of `invocations` (one invocation, from its first registration
    /// to its last unregistration: the `invoke_agent` span).
    InvocationRow, table = "invocations", kind = sc::KIND_INVOCATION,
    [
        invocation_id: Text = sc::INVOCATION_ID,
        agent_kind: Str = sc::AGENT_KIND,
        agent_namespace: Str = sc::AGENT_NAMESPACE,
        agent_name: Str = sc::AGENT_NAME,
        agent_uid: Str = sc::AGENT_UID,
        agent_revision: Str = sc::AGENT_REVISION,
        gen_ai_operation_name: Str = sc::GEN_AI_OPERATION_NAME,
        egret_sandbox_id: Str = sc::SANDBOX_ID,
        egret_trace_id: Str = sc::TRACE_ID,
        egret_span_id: Str = sc::SPAN_ID,
        egret_parent_span_id: Str = sc::PARENT_SPAN_ID,
        egret_duration_ms: Float = sc::DURATION_MS,
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
}
